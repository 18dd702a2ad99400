"""Many standardised logistic regressions at once: one stacked problem, one batched L-BFGS in torch.

Each :class:`Problem` is a set of rows of a shared feature matrix and a C. Problem m standardises its own rows
(``StandardScaler``: mean, population std, 1 where the std is 0) and minimises sklearn's objective
``mean_i CE_i + ||W_m||^2 / (2 C_m n_m)`` (intercept unpenalised; the same minimiser as
``LogisticRegression(C, lbfgs)``: two classes a single logit vector, more classes the multinomial softmax).
Problems are independent, so the gradient of their summed objective is every problem's gradient; the L-BFGS
here keeps a history, a step and a convergence flag per problem, so each converges on its own terms.

Two layouts, chosen by their cost: ``shared`` computes the logits of every problem with one matrix product
over the union of their rows (problems overlap: the folds of a C grid); ``padded`` gathers each problem's rows
into ``[M, n, D]`` (small, disjoint problems: label-efficiency draws).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# Rough CPU rates that only choose between the layouts: a matrix product at 20 GFLOP/s, and ``padded``'s
# batched matrix-vector products at 1.5 GB/s (measured on the real-size cache: 200 ms for [25, 1190, 2048]
# against 27 ms for the shared product over 9,600 rows).
FLOPS_PER_S, BYTES_PER_S = 20e9, 1.5e9
NOISE = 1e-6  # relative rounding of the float32 objective: Armijo's test allows it
HALVINGS = 12


@dataclass
class Problem:
    """One logistic regression: ``rows`` of the shared features and its inverse regularisation ``c``."""

    rows: np.ndarray
    c: float


@dataclass
class LogisticFits:
    """M fitted probes: coefficients on standardised features ``coef [M, D, cols]`` and ``intercept
    [M, cols]`` (``cols`` = 1 for two classes), with each problem's standardisation ``mean``, ``scale
    [M, D]``."""

    coef: torch.Tensor
    intercept: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    classes: int
    iterations: int = 0
    converged: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return int(self.coef.shape[0])

    @torch.no_grad()
    def proba(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, N, K]`` float64 probabilities of every problem on raw features ``x [N, D]``."""
        v = self.coef / self.scale[:, :, None]
        c = self.intercept - torch.einsum("md,mdc->mc", self.mean / self.scale, self.coef)
        return _to_proba(torch.matmul(x.float(), v) + c[:, None, :])

    @torch.no_grad()
    def proba_one(self, m: int, x: torch.Tensor) -> np.ndarray:
        """``[N, K]`` probabilities of problem m on raw features ``x [N, D]`` (numpy, float64)."""
        z = ((x.float() - self.mean[m]) / self.scale[m]) @ self.coef[m] + self.intercept[m]
        return _to_proba(z).cpu().numpy()

    def sklearn_coef(self, m: int) -> np.ndarray:
        """Problem m's ``coef_ [cols, D]`` as sklearn's pipeline holds it (standardised features)."""
        return self.coef[m].T.double().cpu().numpy()


def _to_proba(z: torch.Tensor) -> torch.Tensor:
    if z.shape[-1] == 1:
        z = torch.cat([torch.zeros_like(z), z], -1)
    return torch.softmax(z.double(), -1)


def _nll(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy of logits ``z [M, n, cols]`` against labels ``y [M or 1, n]``."""
    if z.shape[-1] == 1:
        z = z[..., 0]
        return torch.nn.functional.softplus(z) - y.to(z.dtype) * z
    return torch.logsumexp(z, -1) - z.gather(-1, y.expand(z.shape[0], -1).unsqueeze(-1))[..., 0]


def _stats(x: torch.Tensor, rows: list[np.ndarray], chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Every problem's StandardScaler (mean, population std; 1 where the std is 0) as two float64 products
    of a ``[M, union]`` membership matrix with the union's rows, centred on their overall mean (no
    cancellation), ``chunk`` features at a time (one copy of each problem's rows would cost M times more)."""
    dev = x.device
    union = np.unique(np.concatenate(rows))
    member = torch.zeros(len(rows), union.size, dtype=torch.float64, device=dev)
    for i, r in enumerate(rows):
        member[i, torch.as_tensor(np.searchsorted(union, r), device=dev)] = 1.0
    n = member.sum(1, keepdim=True)
    xu = x[torch.as_tensor(union, device=dev)]
    means, variances = [], []
    for lo in range(0, x.shape[1], chunk):
        block = xu[:, lo : lo + chunk].double()
        centre = block.mean(0)
        block -= centre
        first = member @ block / n
        means.append(first + centre)
        variances.append((member @ block.square_() / n - first.square()).clamp_min_(0.0))
    mu, sd = torch.cat(means, 1), torch.cat(variances, 1).sqrt()
    return mu.float(), torch.where(sd > 1e-12 * (1 + mu.abs()), sd, torch.ones_like(sd)).float()


def choose_layout(n_rows: list[int], union: int, dim: int, cols: int) -> str:
    """``shared`` or ``padded``: whichever a pass over the data should take less time with."""
    m = len(n_rows)
    shared = max(4.0 * union * dim * m * cols / FLOPS_PER_S, 4.0 * union * dim / BYTES_PER_S)
    padded = max(4.0 * m * max(n_rows) * dim * cols / FLOPS_PER_S, 8.0 * m * max(n_rows) * dim / BYTES_PER_S)
    return "shared" if shared <= padded else "padded"


def fit_logistic(
    x: torch.Tensor,
    y: np.ndarray,
    problems: list[Problem],
    classes: int,
    *,
    init: LogisticFits | None = None,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    tol: float = 1e-4,
    max_iter: int = 500,
    layout: str | None = None,
) -> LogisticFits:
    """Fit every problem at once (module doc). ``x [N, D]`` raw features (float32, any device), ``y [N]``
    labels 0..classes-1. ``init``: a warm start (same problems, same rows); ``stats``: their standardisation,
    when already known. Converged: the largest gradient entry at most ``tol`` (sklearn's lbfgs criterion)."""
    dev = x.device
    cols = 1 if classes == 2 else classes
    m, d = len(problems), x.shape[1]
    rows = [np.asarray(p.rows, dtype=np.int64) for p in problems]
    mean, scale = stats if stats is not None else _stats(x, rows)
    n = torch.tensor([len(r) for r in rows], dtype=torch.float64, device=dev)
    lam = 1.0 / (torch.tensor([p.c for p in problems], dtype=torch.float64, device=dev) * n)
    union = np.unique(np.concatenate(rows))
    layout = layout or choose_layout([len(r) for r in rows], union.size, d, cols)
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64), device=dev)
    if layout == "shared":
        xu = x[torch.as_tensor(union, device=dev)].float()
        weight = torch.zeros(m, union.size, dtype=torch.float32, device=dev)
        for i, r in enumerate(rows):
            weight[i, torch.as_tensor(np.searchsorted(union, r), device=dev)] = 1.0
        yb = yt[torch.as_tensor(union, device=dev)][None]
        inv, shift = 1.0 / scale, mean / scale

        def logits(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            v = (w * inv[:, :, None]).permute(1, 0, 2).reshape(d, m * cols)
            c = b - torch.einsum("md,mdc->mc", shift, w)
            return (xu @ v).view(-1, m, cols).permute(1, 0, 2) + c[:, None, :]
    else:
        width = max(len(r) for r in rows)
        idx = torch.zeros(m, width, dtype=torch.int64, device=dev)
        weight = torch.zeros(m, width, dtype=torch.float32, device=dev)
        for i, r in enumerate(rows):
            idx[i, : len(r)] = torch.as_tensor(r, device=dev)
            weight[i, : len(r)] = 1.0
        xp = x[idx.view(-1)].float().view(m, width, d).sub_(mean[:, None, :]).div_(scale[:, None, :])
        yb = yt[idx.view(-1)].view(m, width)

        def logits(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.bmm(xp, w) + b[:, None, :]

    p_w = d * cols

    def objective(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            t = theta.float().requires_grad_(True)
            w, b = t[:, :p_w].view(m, d, cols), t[:, p_w:]
            loss = (_nll(logits(w, b), yb) * weight).sum(1).double() / n
            loss = loss + 0.5 * lam * w.double().pow(2).sum((1, 2))
            (g,) = torch.autograd.grad(loss.sum(), t)
        return loss.detach(), g.double()

    theta = torch.zeros(m, p_w + cols, dtype=torch.float64, device=dev)
    if init is not None:
        theta[:, :p_w] = init.coef.reshape(m, -1).double()
        theta[:, p_w:] = init.intercept.double()
    theta, iterations, converged = batched_lbfgs(objective, theta, tol=tol, max_iter=max_iter)
    coef = theta[:, :p_w].view(m, d, cols).float()
    return LogisticFits(coef, theta[:, p_w:].float(), mean, scale, classes, iterations, converged)


def batched_lbfgs(
    objective, theta: torch.Tensor, *, tol: float, max_iter: int, history: int = 10
) -> tuple[torch.Tensor, int, np.ndarray]:
    """Minimise M independent objectives ``objective(theta [M, P]) -> (f [M], grad [M, P])`` with L-BFGS:
    per problem a two-loop direction, an Armijo backtracking step and a stop at ``max|grad| <= tol`` (or
    when no step decreases it any more). Returns theta, the iterations run and the converged flags."""
    f, g = objective(theta)
    m = theta.shape[0]
    done = g.abs().amax(1) <= tol
    stalled = torch.zeros(m, dtype=torch.bool, device=theta.device)
    pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    gamma = torch.clamp(1.0 / g.norm(dim=1).clamp_min(1e-12), max=1.0)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        if bool((done | stalled).all()):
            break
        q = g.clone()
        alphas = []
        for s, yv, rho in reversed(pairs):
            a = rho * (s * q).sum(1)
            q -= a[:, None] * yv
            alphas.append(a)
        r = gamma[:, None] * q
        for (s, yv, rho), a in zip(pairs, reversed(alphas), strict=True):
            r += s * (a - rho * (yv * r).sum(1))[:, None]
        direction = -r
        slope = (g * direction).sum(1)
        bad = slope >= 0
        direction[bad] = -g[bad]
        slope = torch.where(bad, -(g * g).sum(1), slope)
        frozen = done | stalled
        direction[frozen] = 0.0
        step = torch.ones(m, dtype=theta.dtype, device=theta.device)
        noise = NOISE * f.abs()  # the objective's float32 rounding: a step within it is no worse
        for _ in range(HALVINGS):
            new = theta + step[:, None] * direction
            f_new, g_new = objective(new)
            ok = (f_new <= f + 1e-4 * step * slope + noise) | frozen
            if bool(ok.all()):
                break
            step = torch.where(ok, step, step * 0.5)
        ok = (f_new <= f + 1e-4 * step * slope + noise) & ~frozen
        stalled |= ~ok & ~frozen
        s, yv = (new - theta) * ok[:, None], (g_new - g) * ok[:, None]
        theta = torch.where(ok[:, None], new, theta)
        f = torch.where(ok, f_new, f)
        g = torch.where(ok[:, None], g_new, g)
        sy = (s * yv).sum(1)
        valid = sy > 1e-12
        rho = torch.where(valid, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        gamma = torch.where(valid, sy / (yv * yv).sum(1).clamp_min(1e-30), gamma)
        pairs = (pairs + [(s, yv, rho)])[-history:]
        done |= g.abs().amax(1) <= tol
    return theta, it, done.cpu().numpy()


def subset(fits: LogisticFits, idx: list[int]) -> LogisticFits:
    """Problems ``idx`` of ``fits`` (a warm start for the same problems fitted again)."""
    i = torch.as_tensor(idx, dtype=torch.int64, device=fits.coef.device)
    return LogisticFits(
        fits.coef[i], fits.intercept[i], fits.mean[i], fits.scale[i], fits.classes, fits.iterations
    )
