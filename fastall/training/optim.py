"""The optimiser and schedule of every head: torch.optim.Adam (fused), ReduceLROnPlateau, weight grads."""

from __future__ import annotations

import math

import torch

BETAS, EPS = (0.9, 0.999), 1e-8
PLATEAU_THRESHOLD = 1e-4


def adam_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avg: list[torch.Tensor],
    exp_avg_sq: list[torch.Tensor],
    steps: list[torch.Tensor],
    lr: float,
    weight_decay: float = 0.0,
) -> None:
    """One torch.optim.Adam update (L2 weight decay, bias correction, eps 1e-8) of a list of tensors whose
    step counts were already incremented (``torch._foreach_add_(steps, 1)``, as torch does)."""
    if hasattr(torch, "_fused_adam_"):
        torch._fused_adam_(
            params,
            grads,
            exp_avg,
            exp_avg_sq,
            [],
            steps,
            lr=lr,
            beta1=BETAS[0],
            beta2=BETAS[1],
            weight_decay=weight_decay,
            eps=EPS,
            amsgrad=False,
            maximize=False,
        )
        return
    for p, g, m, v, s in zip(params, grads, exp_avg, exp_avg_sq, steps, strict=True):
        g = g.add(p, alpha=weight_decay) if weight_decay else g
        m.lerp_(g, 1 - BETAS[0])
        v.mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
        step = float(s)
        denom = (v.sqrt() / math.sqrt(1 - BETAS[1] ** step)).add_(EPS)
        p.addcdiv_(m, denom, value=-lr / (1 - BETAS[0] ** step))


_FP32_OUT: dict[str, bool] = {"cpu": False}


def weight_grad(
    x: torch.Tensor, dz: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor | None = None
) -> None:
    """``out = x^T @ dz`` in fp32: straight from the bf16 GEMM where the device can (CUDA), else through
    ``scratch`` (a reused buffer shaped like ``out``, in x's dtype) and a cast."""
    if x.dtype == torch.float32:
        torch.bmm(x.transpose(1, 2), dz, out=out)
        return
    dz = dz.to(x.dtype)
    if _FP32_OUT.get(x.device.type, True):
        try:
            torch.bmm(x.transpose(1, 2), dz, out_dtype=torch.float32, out=out)
            return
        except (RuntimeError, NotImplementedError, TypeError):
            _FP32_OUT[x.device.type] = False
    out.copy_(
        torch.bmm(x.transpose(1, 2), dz, out=scratch)
        if scratch is not None
        else torch.bmm(x.transpose(1, 2), dz)
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
