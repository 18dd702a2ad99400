"""Validation and early stopping: after each epoch every live fold head is scored on view 0 of its fold's
validation rows (class-weighted cross-entropy, torch CrossEntropyLoss semantics, and accuracy); its learning
rate follows ReduceLROnPlateau, its best epoch is tracked and, with ``patience``, it stops after that many
epochs without a lower validation loss."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch

from fastall.training.batch import Scratch, standardize_rows
from fastall.training.layout import HeadState, StackLayout
from fastall.training.optim import plateau_update
from fastall.training.stacked import predict, weighted_nll


class Validator:
    """Validation rows of every fold, standardised once per (fold, standardize) and kept for the run."""

    def __init__(self, layout: StackLayout, scratch: Scratch, dtype: torch.dtype) -> None:
        self.layout, self.scratch, self.dtype = layout, scratch, dtype
        data = layout.data
        self.raw = [self.gather(val, 0) for _, val in data.folds]
        self._labels = [torch.as_tensor(data.labels[val], device=layout.device) for _, val in data.folds]
        self._std: dict[tuple[int, bool], torch.Tensor] = {}
        self._lock = threading.Lock()

    def gather(self, rows, view: int) -> torch.Tensor:
        """Raw features ``[len(rows), D]`` of one view."""
        return self.layout.data.features[torch.as_tensor(rows, device=self.layout.device), view]

    def inputs(self, f: int, a: int, b: int) -> torch.Tensor | None:
        """Fold f's validation features standardised for heads a..b (in the compute dtype), or None when those
        heads differ in ``standardize``."""
        layout = self.layout
        flags = {layout.heads[i].cfg.standardize for i in range(a, b)}
        if len(flags) != 1:
            return None
        key = (f, flags.pop())
        with self._lock:
            if key not in self._std:
                rows = torch.as_tensor(layout.data.folds[f][1] * layout.data.views, device=layout.device)
                out = torch.empty((rows.numel(), layout.data.dim), dtype=self.dtype, device=layout.device)
                standardize_rows(layout, self.scratch, out, rows, a)
                self._std[key] = out
            return self._std[key]

    def probabilities(self, params: Sequence[torch.Tensor], f: int, a: int, b: int) -> torch.Tensor:
        """``[b - a, N, K]``: heads a..b (all of fold f) on view 0 of fold f's validation rows."""
        part = [p[a:b] for p in params]
        x = self.inputs(f, a, b)
        if x is not None:
            return predict(part, x, self.dtype)
        return predict(part, self.raw[f], self.dtype, (self.layout.shift[a:b], self.layout.inv[a:b]))

    def scores(
        self, params: Sequence[torch.Tensor], chunk: int, map_fn: Callable = map
    ) -> dict[int, tuple[float, float]]:
        """(validation loss, accuracy) of every live fold head, computed in runs of ``chunk`` heads."""
        layout = self.layout
        tasks = [
            (f, c0, c1)
            for f, a, b in layout.fold_ranges()
            if f < len(layout.data.folds)
            for c0, c1 in layout.chunks(a, b, chunk)
        ]

        def run(task: tuple[int, int, int]) -> torch.Tensor:
            f, c0, c1 = task
            prob = self.probabilities(params, f, c0, c1)
            y = self._labels[f]
            loss = weighted_nll(prob, y, layout.class_w[c0:c1])
            accuracy = (prob.argmax(2) == y).float().mean(1)
            return torch.stack([loss, accuracy], 1)

        out: dict[int, tuple[float, float]] = {}
        for (_, c0, c1), values in zip(tasks, map_fn(run, tasks), strict=True):
            out.update(zip(range(c0, c1), map(tuple, values.tolist()), strict=True))
        return out


def end_fold_epoch(hd: HeadState, epoch: int, loss: float, accuracy: float) -> bool:
    """Record fold head ``hd``'s validated epoch (0-based ``epoch``), step its plateau schedule and decide
    whether it goes on; True when this epoch is its best so far (lowest validation loss). A planned head
    follows its plan and keeps its last epoch."""
    hd.epochs_run = epoch + 1
    hd.history["val_loss"].append(loss)
    hd.history["val_accuracy"].append(accuracy)
    hd.history["lr"].append(hd.lr)
    if hd.plan is not None:
        hd.best_loss, hd.best_epoch = loss, epoch + 1
        hd.lr, hd.alive = hd.plan.lr_at(epoch + 1), epoch + 1 < hd.limit
        return False
    improved = loss < hd.best_loss * (1.0 - hd.cfg.min_delta)
    if improved:
        hd.best_loss, hd.best_epoch = loss, epoch + 1
    cfg = hd.cfg
    hd.lr, hd.plateau_best, hd.plateau_bad = plateau_update(
        loss, hd.lr, hd.plateau_best, hd.plateau_bad, cfg.plateau_factor, cfg.plateau_patience
    )
    stopped = cfg.patience is not None and epoch + 1 - hd.best_epoch >= cfg.patience
    hd.alive = not stopped and epoch + 1 < hd.limit
    return improved
