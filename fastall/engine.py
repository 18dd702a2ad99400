"""The one training engine behind `train-head` and `sweep`: a stack of independent heads in lockstep.

A stack holds M heads of one shape (hidden size, batch size); head m is one (configuration, fold) pair.
Every random stream of a head depends only on (seed, fold, epoch): the permutation, the augmented view drawn
per image, the initialisation and the dropout masks (a counter-based hash, so one head alone and the same head
inside a stack of hundreds draw the same masks). Forward, backward and the optimiser are batched over heads
and written by hand: one bmm per layer and step, `torch._fused_adam_` per (lr, weight decay) group (exactly
torch.optim.Adam), ReduceLROnPlateau and early stopping per head. A head that has finished its epoch, stopped
early or run its epochs gets no update at all. Heads never interact, so a configuration trained in a sweep and
trained alone give the same result.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fastall.errors import FastallError
from fastall.head import head_state_dict

BETAS, EPS = (0.9, 0.999), 1e-8
PLATEAU_THRESHOLD = 1e-4


@dataclass(frozen=True)
class HeadConfig:
    """One head configuration (the train-head options that change training)."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    dropout: float = 0.5
    hidden: int = 512
    epochs: int = 5
    batch_size: int = 32
    patience: int | None = None
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    class_weight: str = "none"
    standardize: bool = True

    def check(self) -> HeadConfig:
        problems = [
            (self.lr > 0, f"lr {self.lr} must be > 0"),
            (self.weight_decay >= 0, f"weight_decay {self.weight_decay} must be >= 0"),
            (0 <= self.dropout < 1, f"dropout {self.dropout} must be in [0, 1)"),
            (self.hidden >= 1, f"hidden {self.hidden} must be >= 1"),
            (self.epochs >= 1, f"epochs {self.epochs} must be >= 1"),
            (self.batch_size >= 1, f"batch_size {self.batch_size} must be >= 1"),
            (self.patience is None or self.patience >= 1, f"patience {self.patience} must be >= 1"),
            (0 < self.plateau_factor <= 1, f"plateau_factor {self.plateau_factor} must be in (0, 1]"),
            (self.plateau_patience >= 0, f"plateau_patience {self.plateau_patience} must be >= 0"),
            (self.class_weight in ("none", "balanced"),
             f"class_weight {self.class_weight!r}: expected none or balanced"),
        ]
        bad = [msg for ok, msg in problems if not ok]
        if bad:
            raise FastallError(f"invalid head configuration: {bad[0]}")
        return self

    @property
    def shape(self) -> tuple[int, int]:
        return (self.hidden, self.batch_size)


@dataclass
class StackData:
    """Features on the training device ([N, V, D] float16), labels, and the rows of each fold."""

    features: torch.Tensor
    labels: np.ndarray
    classes: int
    folds: list[tuple[np.ndarray, np.ndarray]]
    pool: np.ndarray
    test: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    @property
    def views(self) -> int:
        return int(self.features.shape[1])

    @property
    def dim(self) -> int:
        return int(self.features.shape[2])

    def train_views(self) -> list[int]:
        return list(range(1, self.views)) if self.views > 1 else [0]


@dataclass
class HeadResult:
    """One trained head: its Head state dict (CPU) and what happened while training it."""

    config: int
    fold: int
    final: bool
    state: dict[str, torch.Tensor]
    best_epoch: int
    epochs_run: int
    val_loss: float | None
    val_loss_history: list[float]
    lr_history: list[float]
    probs: dict[str, np.ndarray] = field(default_factory=dict)


def derive_seed(*parts: object, bits: int = 63) -> int:
    """A stable integer seed from any parts (blake2b of their repr), independent of Python's hash salt."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << bits) - 1)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise FastallError(f"--device {device!r}: expected auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise FastallError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the device computes it natively (CUDA AMP, CPU avx512_bf16/AMX), else fp32."""
    if precision in ("fp32", "bf16"):
        return precision
    if precision != "auto":
        raise FastallError(f"precision {precision!r}: expected auto, bf16 or fp32")
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


# ---- random streams: functions of (seed, fold, epoch) only ------------------------------------------------

def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int32 tensors (wrapping multiplies, logical shifts by masking)."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * -0x7B935975
    return x ^ ((x >> 16) & 0xFFFF)


def dropout_lanes(seed: int, fold: int, epoch: int, steps: int, batch: int, hidden: int,
                  device: torch.device) -> torch.Tensor:
    """int16 uniforms ``[steps, batch, hidden]``, element (s, b, h) a hash of (seed, fold, epoch, s, b, h).

    Unit h keeps its activation iff ``lane >= round(p * 65536) - 32768`` (p is resolved to 1/65536).
    """
    half = (hidden + 1) // 2
    key = derive_seed(seed, fold, epoch, "dropout", bits=31)
    counter = torch.arange(steps * batch * half, device=device, dtype=torch.int32)
    lanes = _mix32(counter ^ key).view(torch.int16).view(steps, batch, 2 * half)
    return lanes[..., :hidden]


def dropout_threshold(p: float) -> int:
    return min(round(p * 65536), 65535) - 32768


def init_head(seed: int, fold: int, dim: int, hidden: int, classes: int) -> list[torch.Tensor]:
    """nn.Linear's default init, U(+-1/sqrt(fan_in)), from a generator of (seed, fold): W1^T, b1, W2^T, b2."""
    g = torch.Generator().manual_seed(derive_seed(seed, fold, "init"))

    def uniform(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
        bound = 1.0 / math.sqrt(fan_in)
        return torch.rand(shape, generator=g, dtype=torch.float32).mul_(2 * bound).sub_(bound)

    w1, b1 = uniform((hidden, dim), dim), uniform((hidden,), dim)
    w2, b2 = uniform((classes, hidden), hidden), uniform((classes,), hidden)
    return [w1.t().contiguous(), b1, w2.t().contiguous(), b2]


def epoch_order(seed: int, fold: int, epoch: int, rows: np.ndarray,
                views: int) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's permutation of ``rows`` and one training view per image (1..V-1; 0 when V == 1)."""
    g = torch.Generator().manual_seed(derive_seed(seed, fold, epoch, "order"))
    perm = torch.randperm(len(rows), generator=g).numpy()
    if views > 1:
        view = torch.randint(1, views, (len(rows),), generator=g).numpy()
    else:
        view = np.zeros(len(rows), dtype=np.int64)
    return rows[perm], view[perm]


def fold_statistics(features: torch.Tensor, row_sets: Sequence[np.ndarray], views: list[int],
                    chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std ``[F, D]`` of the features of each row set over ``views``, in one pass (float64 sums)."""
    n, dim = features.shape[0], features.shape[2]
    member = torch.zeros(len(row_sets), n, dtype=torch.float64)
    for i, rows in enumerate(row_sets):
        member[i, torch.as_tensor(rows, dtype=torch.long)] = 1.0
    member = member.to(features.device)
    s1 = torch.zeros(len(row_sets), dim, dtype=torch.float64, device=features.device)
    s2 = torch.zeros_like(s1)
    vidx = torch.as_tensor(views, device=features.device)
    for start in range(0, n, chunk):
        x = features[start:start + chunk].index_select(1, vidx).float()
        s1 += member[:, start:start + chunk] @ x.sum(1).double()
        s2 += member[:, start:start + chunk] @ x.square().sum(1).double()
    count = (member.sum(1, keepdim=True) * len(views)).clamp_min(1.0)
    mean = s1 / count
    std = (s2 / count - mean.square()).clamp_min(0.0).sqrt()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return mean.float(), std.float()


# ---- the optimiser: torch.optim.Adam, fused, one call per (lr, weight decay) group -------------------------

def adam_step(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avg: list[torch.Tensor],
              exp_avg_sq: list[torch.Tensor], steps: list[torch.Tensor], lr: float,
              weight_decay: float) -> None:
    """One torch.optim.Adam step (L2 weight decay, bias correction, eps 1e-8) over a list of tensors."""
    torch._foreach_add_(steps, 1)
    if hasattr(torch, "_fused_adam_"):
        torch._fused_adam_(params, grads, exp_avg, exp_avg_sq, [], steps, lr=lr, beta1=BETAS[0],
                           beta2=BETAS[1], weight_decay=weight_decay, eps=EPS, amsgrad=False, maximize=False)
        return
    for p, g, m, v, s in zip(params, grads, exp_avg, exp_avg_sq, steps, strict=True):
        g = g.add(p, alpha=weight_decay) if weight_decay else g
        m.lerp_(g, 1 - BETAS[0])
        v.mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
        step = float(s)
        denom = (v.sqrt() / math.sqrt(1 - BETAS[1] ** step)).add_(EPS)
        p.addcdiv_(m, denom, value=-lr / (1 - BETAS[0] ** step))


def plateau_update(loss: float, lr: float, best: float, bad: int, factor: float,
                   patience: int) -> tuple[float, float, int]:
    """torch's ReduceLROnPlateau (mode min, threshold 1e-4 rel, cooldown 0, min_lr 0, eps 1e-8), one head."""
    if loss < best * (1 - PLATEAU_THRESHOLD):
        best, bad = loss, 0
    else:
        bad += 1
    if bad > patience:
        new_lr = lr * factor
        if lr - new_lr > 1e-8:
            lr = new_lr
        bad = 0
    return lr, best, bad


# ---- the stack ---------------------------------------------------------------------------------------------

@dataclass
class _Head:
    config: int
    cfg: HeadConfig
    fold: int               # index into the stack's folds; the final head's fold is len(data.folds)
    final: bool
    lr: float
    alive: bool = True
    best_loss: float = math.inf
    best_epoch: int = 0
    epochs_run: int = 0
    plateau_best: float = math.inf
    plateau_bad: int = 0
    val_history: list[float] = field(default_factory=list)
    lr_history: list[float] = field(default_factory=list)
    snapshots: list[list[torch.Tensor]] = field(default_factory=list)


class Stack:
    """M heads of one shape: ``W1 [M, D, H]``, ``b1 [M, 1, H]``, ``W2 [M, H, K]``, ``b2 [M, 1, K]``."""

    def __init__(self, data: StackData, configs: list[tuple[int, HeadConfig]], *, final: bool, seed: int,
                 precision: str, stats: tuple[torch.Tensor, torch.Tensor], chunk: int) -> None:
        self.data, self.seed, self.chunk = data, seed, chunk
        self.device = data.features.device
        self.cdt = torch.bfloat16 if precision == "bf16" else torch.float32
        self.hidden, self.batch = configs[0][1].shape
        n_folds = len(data.folds) + (1 if final else 0)
        self.rows = [tr for tr, _ in data.folds] + ([data.pool] if final else [])
        self.heads = [_Head(ci, cfg, f, f == len(data.folds), cfg.lr)
                      for f in range(n_folds) for ci, cfg in configs]
        m, d, h, k = len(self.heads), data.dim, self.hidden, data.classes
        inits = [init_head(seed, f, d, h, k) for f in range(n_folds)]
        self.params = [torch.stack([inits[hd.fold][i] for hd in self.heads]).to(self.device)
                       for i in range(4)]
        self.params[1] = self.params[1].unsqueeze(1)
        self.params[3] = self.params[3].unsqueeze(1)
        self.grads = [torch.zeros_like(p) for p in self.params]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.best = [p.clone() for p in self.params] if any(hd.cfg.patience for hd in self.heads) else []
        self.steps = [[torch.zeros((), device=self.device) for _ in range(4)] for _ in range(m)]
        mean, std = stats
        std_on = torch.tensor([hd.cfg.standardize for hd in self.heads], device=self.device)[:, None]
        fold_idx = torch.tensor([hd.fold for hd in self.heads], device=self.device)
        self.mean = torch.where(std_on, mean[fold_idx], torch.zeros(1, device=self.device))
        self.std = torch.where(std_on, std[fold_idx], torch.ones(1, device=self.device))
        self.inv = (1.0 / self.std).unsqueeze(1)
        self.shift = (-self.mean).unsqueeze(1) * self.inv
        p = torch.tensor([hd.cfg.dropout for hd in self.heads], device=self.device)
        self.thr = torch.tensor([dropout_threshold(hd.cfg.dropout) for hd in self.heads],
                                device=self.device, dtype=torch.int16).view(m, 1, 1)
        self.scale = (1.0 / (1.0 - p)).float().view(m, 1, 1)
        self.class_w = torch.stack([self._class_weights(hd) for hd in self.heads]).to(self.device)
        self.val_x = [self._gather(val, 0) for _, val in data.folds]

    def _class_weights(self, hd: _Head) -> torch.Tensor:
        k = self.data.classes
        if hd.cfg.class_weight == "none":
            return torch.ones(k)
        counts = np.bincount(self.data.labels[self.rows[hd.fold]], minlength=k).astype(np.float64)
        weights = np.where(counts > 0, counts.sum() / (k * np.maximum(counts, 1)), 0.0)
        return torch.tensor(weights, dtype=torch.float32)

    def _gather(self, rows: np.ndarray, view: int) -> torch.Tensor:
        return self.data.features[torch.as_tensor(rows, device=self.device), view]

    def _head_view(self, i: int) -> list[list[torch.Tensor]]:
        return [[t[i] for t in group] for group in (self.params, self.grads, self.exp_avg, self.exp_avg_sq)]

    # -- training -------------------------------------------------------------------------------------------

    def train(self, progress: Callable[[int, int], None] | None = None) -> None:
        max_epochs = max(hd.cfg.epochs for hd in self.heads)
        for epoch in range(max_epochs):
            if not any(hd.alive for hd in self.heads):
                break
            self._train_epoch(epoch)
            self._end_epoch(epoch)
            if progress:
                progress(epoch + 1, max_epochs)
        self._restore()

    def _train_epoch(self, epoch: int) -> None:
        n_folds = len(self.rows)
        live_folds = sorted({hd.fold for hd in self.heads if hd.alive})
        order = {f: epoch_order(self.seed, f, epoch, self.rows[f], self.data.views) for f in live_folds}
        n_steps = {f: -(-len(self.rows[f]) // self.batch) for f in range(n_folds)}
        lanes = {f: dropout_lanes(self.seed, f, epoch, n_steps[f], self.batch, self.hidden, self.device)
                 for f in live_folds}
        for start in range(0, len(self.heads), self.chunk):
            idx = [i for i in range(start, min(start + self.chunk, len(self.heads))) if self.heads[i].alive]
            if idx:
                self._train_chunk(idx[0], idx[-1] + 1, order, n_steps, lanes)

    def _train_chunk(self, a: int, b: int, order: dict, n_steps: dict, lanes: dict) -> None:
        heads = self.heads[a:b]
        folds = sorted({hd.fold for hd in heads if hd.alive})
        pos = {f: i for i, f in enumerate(folds)}
        s_max, bsz, k = max(n_steps[f] for f in folds), self.batch, self.data.classes
        rows = np.zeros((s_max, len(folds), bsz), dtype=np.int64)
        view = np.zeros_like(rows)
        valid = np.zeros(rows.shape, dtype=bool)
        for f in folds:
            r, v = order[f]
            n = len(r)
            flat = np.zeros(s_max * bsz, dtype=np.int64)
            flat[:n] = r
            rows[:, pos[f]] = flat.reshape(s_max, bsz)
            flat[:n] = v
            view[:, pos[f]] = flat.reshape(s_max, bsz)
            valid[:, pos[f]] = (np.arange(s_max * bsz) < n).reshape(s_max, bsz)
        dev = self.device
        fpos = torch.tensor([pos.get(hd.fold, 0) for hd in heads], device=dev)
        rows_t, view_t = torch.as_tensor(rows, device=dev), torch.as_tensor(view, device=dev)
        y = torch.as_tensor(self.data.labels, device=dev)[rows_t].index_select(1, fpos)        # [S, Mc, B]
        w = self.class_w[a:b].unsqueeze(0).expand(s_max, -1, -1).gather(2, y)               # [S, Mc, B]
        w = w * torch.as_tensor(valid, device=dev).index_select(1, fpos)
        w = w / w.sum(2, keepdim=True).clamp_min(1e-12)
        target = torch.nn.functional.one_hot(y, k).float() * w.unsqueeze(-1)               # [S, Mc, B, K]
        w = w.unsqueeze(-1)
        lane_steps = torch.zeros((s_max, len(folds), bsz, self.hidden), dtype=torch.int16, device=dev)
        for f in folds:
            lane_steps[:n_steps[f], pos[f]] = lanes[f]
        plans = self._adam_plans(a, b, n_steps)
        W1, b1, W2, b2 = (p[a:b] for p in self.params)
        gW1, gb1, gW2, gb2 = (g[a:b] for g in self.grads)
        shift, inv, thr, scale = self.shift[a:b], self.inv[a:b], self.thr[a:b], self.scale[a:b]
        identity = [pos.get(hd.fold, 0) for hd in heads] == list(range(b - a))
        feats, cdt = self.data.features, self.cdt
        for s in range(s_max):
            x = feats[rows_t[s], view_t[s]]
            keep = lane_steps[s]
            if not identity:
                x, keep = x.index_select(0, fpos), keep.index_select(0, fpos)
            x = torch.addcmul(shift, x, inv).to(cdt)
            z = torch.baddbmm(b1.to(cdt), x, W1.to(cdt)).float()
            mask = torch.where(keep >= thr, scale, 0.0)
            mask = torch.where(z > 0, mask, 0.0)
            act = z * mask
            prob = torch.softmax(torch.baddbmm(b2, act, W2), -1)
            dl = prob * w[s] - target[s]
            torch.bmm(act.transpose(1, 2), dl, out=gW2)
            torch.sum(dl, 1, keepdim=True, out=gb2)
            dz = torch.bmm(dl, W2.transpose(1, 2)).mul_(mask)
            torch.sum(dz, 1, keepdim=True, out=gb1)
            if cdt == torch.float32:
                torch.bmm(x.transpose(1, 2), dz, out=gW1)
            else:
                gW1.copy_(torch.bmm(x.transpose(1, 2), dz.to(cdt)))
            for lr, wd, lists in plans[s]:
                adam_step(*lists, lr=lr, weight_decay=wd)

    def _adam_plans(self, a: int, b: int, n_steps: dict) -> list[list[tuple[float, float, list]]]:
        """Per step: (lr, weight decay, tensor lists) of the heads that update at that step."""
        s_max = max(n_steps[self.heads[i].fold] for i in range(a, b) if self.heads[i].alive)
        plans: list = []
        cache: dict = {}
        for s in range(s_max):
            active = tuple(i for i in range(a, b) if self.heads[i].alive and s < n_steps[self.heads[i].fold])
            if active not in cache:
                groups: dict[tuple[float, float], list[list[torch.Tensor]]] = {}
                for i in active:
                    hd = self.heads[i]
                    lists = groups.setdefault((hd.lr, hd.cfg.weight_decay), [[], [], [], [], []])
                    for slot, tensors in zip(lists, [*self._head_view(i), self.steps[i]], strict=True):
                        slot.extend(tensors)
                cache[active] = [(lr, wd, lists) for (lr, wd), lists in groups.items()]
            plans.append(cache[active])
        return plans

    # -- validation, schedules, early stopping --------------------------------------------------------------

    @torch.no_grad()
    def predict(self, a: int, b: int, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``[b - a, N, K]`` of heads a..b on raw features ``x [N, D]``."""
        W1, b1, W2, b2 = (p[a:b] for p in self.params)
        W1c, b1c = W1.to(self.cdt), b1.to(self.cdt)
        rows_per_chunk = max(16, min(1024, (1 << 25) // ((b - a) * x.shape[1])))
        out = []
        for start in range(0, x.shape[0], rows_per_chunk):
            xs = torch.addcmul(self.shift[a:b], x[start:start + rows_per_chunk].unsqueeze(0), self.inv[a:b])
            z = torch.baddbmm(b1c, xs.to(self.cdt), W1c).float().relu_()
            out.append(torch.softmax(torch.baddbmm(b2, z, W2), -1))
        return torch.cat(out, 1)

    def _fold_ranges(self) -> list[tuple[int, int, int]]:
        """(fold, a, b): the contiguous head range of each fold (heads are stored fold-major)."""
        out, a = [], 0
        for i in range(1, len(self.heads) + 1):
            if i == len(self.heads) or self.heads[i].fold != self.heads[a].fold:
                out.append((self.heads[a].fold, a, i))
                a = i
        return out

    def _val_losses(self) -> dict[int, float]:
        losses = {}
        for f, a, b in self._fold_ranges():
            if f >= len(self.data.folds) or not any(self.heads[i].alive for i in range(a, b)):
                continue
            for c0 in range(a, b, max(1, self.chunk)):
                c1 = min(b, c0 + max(1, self.chunk))
                loss = self._loss(c0, c1, self.predict(c0, c1, self.val_x[f]), self.data.folds[f][1])
                losses.update({i: float(v) for i, v in zip(range(c0, c1), loss.tolist(), strict=True)})
        return losses

    def _loss(self, a: int, b: int, prob: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """Class-weighted mean cross-entropy per head (torch CrossEntropyLoss semantics)."""
        y = torch.as_tensor(self.data.labels[rows], device=self.device)
        nll = -prob.clamp_min(1e-30).log().gather(2, y.view(1, -1, 1).expand(b - a, -1, 1)).squeeze(2)
        w = self.class_w[a:b][:, y]
        return (nll * w).sum(1) / w.sum(1).clamp_min(1e-12)

    def _end_epoch(self, epoch: int) -> None:
        losses = self._val_losses()
        for i, hd in enumerate(self.heads):
            if not hd.alive or hd.final:
                continue
            loss = losses[i]
            hd.epochs_run = epoch + 1
            hd.val_history.append(loss)
            hd.lr_history.append(hd.lr)
            if loss < hd.best_loss:
                hd.best_loss, hd.best_epoch = loss, epoch + 1
                if hd.cfg.patience is not None:
                    for p, q in zip(self.best, self.params, strict=True):
                        p[i].copy_(q[i])
            hd.lr, hd.plateau_best, hd.plateau_bad = plateau_update(
                loss, hd.lr, hd.plateau_best, hd.plateau_bad, hd.cfg.plateau_factor, hd.cfg.plateau_patience)
            stopped = hd.cfg.patience is not None and epoch + 1 - hd.best_epoch >= hd.cfg.patience
            hd.alive = not stopped and epoch + 1 < hd.cfg.epochs
        for i, hd in enumerate(self.heads):
            if hd.final and hd.alive:
                self._end_epoch_final(i, hd, epoch)

    def _fold_heads(self, config: int) -> list[_Head]:
        return [hd for hd in self.heads if hd.config == config and not hd.final]

    def final_epochs(self, config: int) -> int:
        """The median of the folds' best-epoch counts (rounded up): the final head's training length."""
        return int(math.ceil(np.median([self._kept_epoch(hd) for hd in self._fold_heads(config)])))

    @staticmethod
    def _kept_epoch(hd: _Head) -> int:
        return hd.best_epoch if hd.cfg.patience is not None else hd.epochs_run

    def _end_epoch_final(self, i: int, hd: _Head, epoch: int) -> None:
        hd.epochs_run = epoch + 1
        hd.lr_history.append(hd.lr)
        hd.snapshots.append([p[i].detach().clone() for p in self.params])
        folds = self._fold_heads(hd.config)
        hd.lr = float(np.median([f.lr for f in folds]))
        done = not any(f.alive for f in folds)
        hd.alive = epoch + 1 < hd.cfg.epochs and not (done and epoch + 1 >= self.final_epochs(hd.config))

    def _restore(self) -> None:
        for i, hd in enumerate(self.heads):
            if hd.final:
                hd.best_epoch = self.final_epochs(hd.config)
                for p, snap in zip(self.params, hd.snapshots[hd.best_epoch - 1], strict=True):
                    p[i].copy_(snap)
                hd.snapshots = []
            elif hd.cfg.patience is not None:
                for p, q in zip(self.params, self.best, strict=True):
                    p[i].copy_(q[i])
            else:
                hd.best_epoch = hd.epochs_run

    # -- results --------------------------------------------------------------------------------------------

    def results(self, tta: bool) -> list[HeadResult]:
        out = []
        views = range(self.data.views) if tta else ()
        test = self.data.test
        for f, a, b in self._fold_ranges():
            probs: list[dict[str, np.ndarray]] = [{} for _ in range(a, b)]
            sets = {"test": test} if test.size else {}
            if f < len(self.data.folds):
                sets["val"] = self.data.folds[f][1]
            for name, rows in sets.items():
                p0 = self.predict(a, b, self._gather(rows, 0)).cpu().numpy()
                ptta = sum(self.predict(a, b, self._gather(rows, v)) for v in views)
                for j in range(b - a):
                    probs[j][name] = p0[j]
                    if tta:
                        probs[j][f"{name}_tta"] = (ptta[j] / self.data.views).cpu().numpy()
            for j, i in enumerate(range(a, b)):
                hd = self.heads[i]
                kept = None if hd.final else hd.val_history[self._kept_epoch(hd) - 1]
                state = head_state_dict(*(p[i].detach().cpu() for p in self.params),
                                        mean=self.mean[i].cpu(), std=self.std[i].cpu())
                out.append(HeadResult(hd.config, hd.fold, hd.final, state, hd.best_epoch, hd.epochs_run, kept,
                                      hd.val_history, hd.lr_history, probs[j]))
        return out


def _sub_progress(progress: Callable | None, group: int, groups: int, done: float,
                  weight: float) -> Callable[[int, int], None] | None:
    """Report a stack's epochs as the fraction of its shape group done: ``progress(group, groups, f, 1)``."""
    if progress is None:
        return None
    return lambda epoch, epochs: progress(group, groups, done + weight * epoch / epochs, 1)


def max_configs_per_stack(device: torch.device, folds: int, dim: int, hidden: int) -> int:
    """Configurations per stack so that parameters, gradients and Adam state stay within a memory budget
    (2 GB on a CPU, half the free memory on CUDA); heads are independent, so splitting changes nothing."""
    budget = torch.cuda.mem_get_info(device)[0] * 0.5 if device.type == "cuda" else 2e9
    per_config = folds * dim * hidden * 4 * 6
    return max(1, int(budget // per_config))


def default_chunk(device: torch.device, heads: int, dim: int, hidden: int) -> int:
    """Heads trained together per step: all on CUDA (memory permitting); on a CPU one head at a time keeps its
    parameters and Adam state in the last-level cache."""
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    per_head = dim * hidden * 4 * 8
    return max(1, min(heads, int(free * 0.5 // per_head)))


def train_stacks(data: StackData, configs: Sequence[HeadConfig], *, seed: int = 0, precision: str = "fp32",
                 final: bool = False, tta: bool = False, chunk: int | None = None,
                 progress: Callable[[int, int, int, int], None] | None = None) -> list[HeadResult]:
    """Train every configuration on every fold (and a final head on the whole pool when ``final``).

    Configurations of one shape (hidden, batch size) form one stack (split if memory demands); stacks run
    one after the other. ``progress(group, groups, done, total)`` is called after each epoch.
    """
    configs = [c.check() for c in configs]
    row_sets = [tr for tr, _ in data.folds] + ([data.pool] if final else [])
    stats = fold_statistics(data.features, row_sets, data.train_views())
    shapes: dict[tuple[int, int], list[tuple[int, HeadConfig]]] = {}
    for i, cfg in enumerate(configs):
        shapes.setdefault(cfg.shape, []).append((i, cfg))
    results: list[HeadResult] = []
    for g, group in enumerate(shapes.values()):
        per_stack = max_configs_per_stack(data.features.device, len(row_sets), data.dim, group[0][1].hidden)
        for start in range(0, len(group), per_stack):
            part = group[start:start + per_stack]
            heads = len(part) * len(row_sets)
            size = chunk or default_chunk(data.features.device, heads, data.dim, part[0][1].hidden)
            stack = Stack(data, part, final=final, seed=seed, precision=precision, stats=stats, chunk=size)
            stack.train(_sub_progress(progress, g, len(shapes), start / len(group), len(part) / len(group)))
            results.extend(stack.results(tta))
            del stack
    return sorted(results, key=lambda r: (r.config, r.fold))
