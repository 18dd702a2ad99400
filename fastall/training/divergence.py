"""Diverged heads: a head whose loss or outputs went NaN/Inf is marked, never scored, ranked or recommended.

HeadConfig.check refuses non-finite and absurd learning rates and weight decays, and the cache reader refuses
NaN features, so divergence should not happen; this is the net behind those checks.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fastall.errors import FastallError
from fastall.system.notices import Notices
from fastall.training.config import HeadResult
from fastall.training.metrics import METRICS, classification_metrics


def diverged(result: HeadResult) -> bool:
    """True when the head's validation loss, its outputs or its weights are not finite."""
    losses = [v for v in [result.val_loss, *result.val_loss_history] if v is not None]
    if any(not math.isfinite(float(v)) for v in losses):
        return True
    if any(not np.isfinite(np.asarray(p)).all() for p in result.probs.values()):
        return True
    return any(t.is_floating_point() and not torch.isfinite(t).all() for t in result.state.values())


def metrics_or_nan(
    y_true: np.ndarray, prob: np.ndarray, classes: int, detail: bool = True, positive: int | None = 1
) -> dict:
    """classification_metrics; every metric NaN (and ``diverged``) when the probabilities are not finite."""
    if np.isfinite(prob).all():
        return classification_metrics(y_true, prob, classes, detail=detail, positive=positive)
    out = {"n": int(len(y_true)), **{name: math.nan for name in METRICS}, "diverged": True}
    if detail:
        out["log_loss"] = math.nan
    return out


def diverged_message(what: str, lr: float, weight_decay: float) -> str:
    return (
        f"training diverged: the loss of {what} became NaN/Inf (lr {lr:g}, weight decay {weight_decay:g}); "
        "lower --lr or --weight-decay (the paper's lr is 1e-4)"
    )


def check_divergence(results: list[HeadResult], lr: float, weight_decay: float, warnings: Notices) -> None:
    """A diverged final head is refused (nothing is written); diverged fold heads are marked and recorded in
    ``warnings`` (code ``diverged``)."""
    if any(r.final and diverged(r) for r in results):
        raise FastallError(diverged_message("the final head", lr, weight_decay) + "; nothing was written")
    folds = [r.fold for r in results if not r.final and diverged(r)]
    if folds:
        message = diverged_message(f"fold(s) {', '.join(map(str, folds))}", lr, weight_decay)
        warnings.add("diverged", f"{message}; marked in metrics.json and left out of the means")
