"""The optimiser and schedule of every head: Adam over stacked heads, ReduceLROnPlateau, weight gradients.

:class:`StackedAdam` holds M heads' parameters ``[M, ...]`` with their gradients and Adam state and steps any
subset of them, each head with its own learning rate and weight decay (torch.optim.Adam's formula: L2 weight
decay, bias correction, eps 1e-8). Two implementations agree (tested): :func:`fused_adam_`, torch's fused
kernel over per-head tensor lists grouped by (lr, weight decay), and :func:`stacked_adam_`, plain tensor
ops over the stacked tensors with lr, weight decay and an active mask as per-head tensors (the public
fallback for a device without the fused kernel).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.optim.adam import adam as torch_adam

BETAS, EPS = (0.9, 0.999), 1e-8
PLATEAU_THRESHOLD = 1e-4
USE_PRIVATE_FUSED = True  # False: the public torch.optim.adam.adam(fused=True) path (tests compare the two)

AdamLists = tuple[
    list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]
]
"""params, grads, exp_avg, exp_avg_sq, steps: one tensor each per (head, parameter tensor)."""


def fused_adam_(groups: Sequence[tuple[float, float, AdamLists]], steps: list[torch.Tensor]) -> None:
    """One Adam step of every (lr, weight decay, tensor lists) group through torch's fused kernel; increments
    ``steps`` (the step tensors of all groups) first, as torch.optim.Adam does.

    The only use of a private torch API: ``torch._fused_adam_`` skips the public wrapper's per-call grouping
    by device and dtype (about 10 µs a call, one call per head and step on a CPU: about 1% of a CV). Without
    it, the public ``torch.optim.adam.adam(fused=True)`` runs the same kernel (tested to agree).
    """
    private = getattr(torch, "_fused_adam_", None) if USE_PRIVATE_FUSED else None
    if private is not None:
        torch._foreach_add_(steps, 1)
    for lr, decay, (params, grads, exp_avg, exp_avg_sq, state_steps) in groups:
        if private is not None:
            private(params, grads, exp_avg, exp_avg_sq, [], state_steps, lr=lr, weight_decay=decay, **_ADAM)
        else:
            torch_adam(
                params,
                grads,
                exp_avg,
                exp_avg_sq,
                [],
                state_steps,
                fused=True,
                lr=lr,
                weight_decay=decay,
                **_ADAM,
            )


_ADAM = {"beta1": BETAS[0], "beta2": BETAS[1], "eps": EPS, "amsgrad": False, "maximize": False}


def stacked_adam_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avg: Sequence[torch.Tensor],
    exp_avg_sq: Sequence[torch.Tensor],
    steps: torch.Tensor,
    lr: torch.Tensor,
    weight_decay: torch.Tensor | None,
    active: torch.Tensor,
) -> None:
    """One Adam step of M stacked heads in plain tensor ops: every tensor is ``[M, ...]``; ``steps``, ``lr``,
    ``weight_decay`` (None: no decay) and ``active`` (bool) are ``[M]`` on the parameters' device. Inactive
    heads are left exactly as they were, step count included."""
    act = active.to(torch.float32)
    steps.add_(act)
    step = steps.to(torch.float64)
    started = step > 0
    bc1 = torch.where(started, 1 - BETAS[0] ** step, 1.0)
    bc2_sqrt = torch.where(started, (1 - BETAS[1] ** step).sqrt(), 1.0)
    step_size = torch.where(active, lr.to(torch.float64) / bc1, 0.0)

    def per_head(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    for p, g, m, v in zip(params, grads, exp_avg, exp_avg_sq, strict=True):
        if weight_decay is not None:
            g = torch.addcmul(g, p, per_head(weight_decay, p))
        m.lerp_(g, per_head(act * (1 - BETAS[0]), m))
        v.mul_(per_head(1 - act * (1 - BETAS[1]), v)).addcmul_(g * per_head(act * (1 - BETAS[1]), g), g)
        denom = v.sqrt().div_(per_head(bc2_sqrt, v)).add_(EPS)
        p.addcdiv_(m * per_head(-step_size, m), denom)


@functools.cache
def fused_supported(device: str) -> bool:
    """Whether torch's fused Adam runs on ``device`` (probed once on tiny tensors)."""
    t = [torch.zeros(2, device=device) for _ in range(4)]
    steps = [torch.zeros((), device=device)]
    try:
        fused_adam_([(1e-3, 0.0, ([t[0]], [t[1]], [t[2]], [t[3]], steps))], steps)
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    return True


@dataclass
class AdamStep:
    """The update of one training step: the heads that step and how (fused groups or stacked tensors)."""

    steps: list[torch.Tensor]
    groups: list[tuple[float, float, AdamLists]]
    span: tuple[int, int] = (0, 0)
    lr: torch.Tensor | None = None
    weight_decay: torch.Tensor | None = None
    active: torch.Tensor | None = None


class StackedAdam:
    """Adam over M stacked heads: ``params`` (4 tensors ``[M, ...]``), their ``grads`` (written by the
    forward/backward), ``exp_avg``, ``exp_avg_sq`` and ``steps [M, 4]`` (one count per head and tensor)."""

    def __init__(self, params: list[torch.Tensor], fused: bool | None = None) -> None:
        self.params = params
        self.grads = [torch.zeros_like(p) for p in params]
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        device = params[0].device
        self.steps = torch.zeros((params[0].shape[0], len(params)), device=device)
        self.fused = fused_supported(str(device)) if fused is None else fused

    def _lists(self, heads: Sequence[int]) -> AdamLists:
        groups = (self.params, self.grads, self.exp_avg, self.exp_avg_sq)
        lists = tuple([t[i] for i in heads for t in group] for group in groups)
        return (*lists, [self.steps[i, j] for i in heads for j in range(len(self.params))])

    def plan(
        self, a: int, lr: torch.Tensor, weight_decay: torch.Tensor, active: torch.Tensor
    ) -> list[AdamStep]:
        """The updates of heads ``a .. a + n`` at each step of an epoch: ``lr`` and ``weight_decay [n]``
        (float64) and ``active [S, n]`` (bool: head a + j updates at step s), on the CPU. Steps with the same
        active heads share one update, built once."""
        plans: dict[tuple[bool, ...], AdamStep] = {}
        out = []
        for row in active.tolist():
            key = tuple(row)
            if key not in plans:
                make = self._fused_step if self.fused else self._stacked_step
                plans[key] = make(a, row, lr, weight_decay)
            out.append(plans[key])
        return out

    def _fused_step(self, a: int, row: list[bool], lr: torch.Tensor, weight_decay: torch.Tensor) -> AdamStep:
        heads = [a + j for j, on in enumerate(row) if on]
        by_rate: dict[tuple[float, float], list[int]] = {}
        for i, rate, decay in zip(heads, lr[row].tolist(), weight_decay[row].tolist(), strict=True):
            by_rate.setdefault((rate, decay), []).append(i)
        groups = [(rate, decay, self._lists(idx)) for (rate, decay), idx in by_rate.items()]
        return AdamStep(self._lists(heads)[4], groups)

    def _stacked_step(
        self, a: int, row: list[bool], lr: torch.Tensor, weight_decay: torch.Tensor
    ) -> AdamStep:
        dev = self.params[0].device
        decay = weight_decay.to(dev) if bool((weight_decay != 0).any()) else None
        return AdamStep([], [], (a, a + len(row)), lr.to(dev), decay, torch.tensor(row, device=dev))

    def step(self, update: AdamStep) -> None:
        if self.fused:
            fused_adam_(update.groups, update.steps)
            return
        a, b = update.span
        sliced = [
            [t[a:b] for t in group] for group in (self.params, self.grads, self.exp_avg, self.exp_avg_sq)
        ]
        stacked_adam_(*sliced, self.steps[a:b, 0], update.lr, update.weight_decay, update.active)
        self.steps[a:b, 1:] = self.steps[a:b, :1]


_FP32_OUT: dict[str, bool] = {"cpu": False}


def weight_grad(
    x: torch.Tensor, dz: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor | None = None
) -> None:
    """``out = dz^T @ x`` (the first layer's weight gradient, ``[M, H, D]``) in fp32: straight from the bf16
    GEMM where the device can (CUDA), else through ``scratch`` (a reused buffer shaped like ``out``, in x's
    dtype) and a cast."""
    if x.dtype == torch.float32:
        torch.bmm(dz.transpose(1, 2), x, out=out)
        return
    dz = dz.to(x.dtype)
    if _FP32_OUT.get(x.device.type, True):
        try:
            torch.bmm(dz.transpose(1, 2), x, out_dtype=torch.float32, out=out)
            return
        except (RuntimeError, NotImplementedError, TypeError):
            _FP32_OUT[x.device.type] = False
    out.copy_(
        torch.bmm(dz.transpose(1, 2), x, out=scratch)
        if scratch is not None
        else torch.bmm(dz.transpose(1, 2), x)
    )


def plateau_update(
    loss: float, lr: float, best: float, bad: int, factor: float, patience: int
) -> tuple[float, float, int]:
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
