"""The final head's length and the packaging of trained heads.

The final head trains on the whole pool alongside the fold heads and keeps the parameters of epoch
``ceil(median)`` of the folds' kept-epoch counts (a snapshot per epoch until that is known); its learning rate
follows the median of the folds'. Every head is then packaged as a :class:`HeadResult`: its probabilities on
its validation rows and the test rows (view 0, and the mean over all views with TTA), its state dict and its
history.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from fastall.training.config import HeadResult
from fastall.training.layout import HeadState, StackLayout
from fastall.training.stacked import predict
from fastall.training.validation import Validator


def kept_epoch(hd: HeadState) -> int:
    """The 1-based epoch a fold head keeps: its best with early stopping, else its last."""
    return hd.best_epoch if hd.cfg.patience is not None and hd.plan is None else hd.epochs_run


def final_epochs(layout: StackLayout, config: int) -> int:
    """The median of the folds' kept-epoch counts (rounded up): the final head's training length."""
    return int(math.ceil(np.median([kept_epoch(hd) for hd in layout.fold_heads(config)])))


def end_final_epoch(layout: StackLayout, params: Sequence[torch.Tensor], i: int, epoch: int) -> None:
    """After the fold heads' epoch: snapshot final head i, take the folds' median lr, and stop it once its
    length is known and reached (or at ``epochs``)."""
    hd = layout.heads[i]
    hd.epochs_run = epoch + 1
    hd.history["lr"].append(hd.lr)
    if hd.plan is not None:
        hd.lr, hd.alive = hd.plan.lr_at(epoch + 1), epoch + 1 < hd.limit
        return
    hd.snapshots.append([p[i].detach().clone() for p in params])
    folds = layout.fold_heads(hd.config)
    hd.lr = float(np.median([f.lr for f in folds]))
    done = not any(f.alive for f in folds)
    hd.alive = epoch + 1 < hd.limit and not (done and epoch + 1 >= final_epochs(layout, hd.config))


def restore_kept(layout: StackLayout, params: Sequence[torch.Tensor], best: Sequence[torch.Tensor]) -> None:
    """Put every head's kept parameters back: the final head's chosen snapshot, an early-stopped head's
    best epoch (``best``); other heads keep their last epoch."""
    for i, hd in enumerate(layout.heads):
        if hd.plan is not None:
            hd.best_epoch = hd.epochs_run
        elif hd.final:
            hd.best_epoch = final_epochs(layout, hd.config)
            for p, snap in zip(params, hd.snapshots[hd.best_epoch - 1], strict=True):
                p[i].copy_(snap)
            hd.snapshots = []
        elif hd.cfg.patience is not None:
            for p, q in zip(params, best, strict=True):
                p[i].copy_(q[i])
        else:
            hd.best_epoch = hd.epochs_run


def package(
    layout: StackLayout,
    params: Sequence[torch.Tensor],
    val: Validator,
    chunk: int,
    *,
    tta: bool,
    states: bool,
    map_fn: Callable = map,
) -> list[HeadResult]:
    """Every head as a HeadResult, computed in runs of ``chunk`` heads."""
    tasks = [(f, c0, c1) for f, a, b in layout.fold_ranges() for c0, c1 in layout.chunks(a, b, chunk, False)]
    parts = map_fn(lambda t: _package(layout, params, val, *t, tta, states), tasks)
    return [r for part in parts for r in part]


def _package(
    layout: StackLayout,
    params: Sequence[torch.Tensor],
    val: Validator,
    f: int,
    a: int,
    b: int,
    tta: bool,
    states: bool,
) -> list[HeadResult]:
    data = layout.data
    part = [p[a:b] for p in params]
    raw = (layout.shift[a:b], layout.inv[a:b])
    probs: list[dict[str, np.ndarray]] = [{} for _ in range(a, b)]
    sets = {"test": data.test} if data.test.size else {}
    if f < len(data.folds):
        sets["val"] = data.folds[f][1]
    for name, rows in sets.items():
        p0 = predict(part, val.gather(rows, 0), val.dtype, raw, exact=True).cpu().numpy()
        for j in range(b - a):
            probs[j][name] = p0[j]
        if tta:
            ptta = sum(
                predict(part, val.gather(rows, v), val.dtype, raw, exact=True) for v in range(data.views)
            )
            for j in range(b - a):
                probs[j][f"{name}_tta"] = (ptta[j] / data.views).cpu().numpy()
    out = []
    for j, i in enumerate(range(a, b)):
        hd = layout.heads[i]
        kept_at = kept_epoch(hd)
        kept = None if hd.final else hd.val_history[kept_at - 1] if kept_at else hd.initial_loss
        state = {}
        if states:
            state = layout.state_dict(params, i)
        history = {key: list(values) for key, values in hd.history.items()}
        out.append(
            HeadResult(
                hd.config,
                hd.fold,
                hd.final,
                state,
                hd.best_epoch,
                hd.epochs_run,
                kept,
                hd.val_history,
                hd.lr_history,
                probs[j],
                history,
            )
        )
    return out
