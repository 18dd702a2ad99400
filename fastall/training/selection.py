"""Selection on an inner split: early stopping, the plateau schedule and ``--tune`` never look at the fold
being reported.

For each outer fold k, the training patients are split once more by patient, stratified by class
(``StratifiedGroupKFold``, the first of ``n`` splits, n = min(5, fewest patients of a class): about 20% of
the patients, at least one of each class). Two phases, both on the stacked engine:

1. **select**: every configuration trains on the inner-training rows of every fold; early stopping and
   ReduceLROnPlateau follow the inner-validation loss (view 0). Each fold keeps the configuration with the
   lowest inner-validation loss at its kept epoch (with one configuration there is nothing to choose), and
   its kept epoch count and learning-rate schedule become a :class:`~fastall.training.config.Plan`.
2. **refit**: fold k's head trains on all of fold k's training rows with its plan (no decision from its
   validation rows, which it only reports), and the final head on the whole pool with the plan of the final
   configuration (the lowest mean inner loss over folds): the median of the folds' kept epochs and, per
   epoch, the median of their learning rates.

The outer validation rows of a fold never enter its phase 1, so nothing selects on what is reported.

With ``linear_init`` (``--head-init probe``), every head starts as the linear probe fitted on its own training
rows (``probe.fit_probe`` with C by inner CV on those rows alone; ``layout.embed_linear``): phase 1's on its
inner-training rows, phase 2's on the fold's training rows (the baseline's own fits) and on the pool.

A fold whose training rows hold fewer than :data:`MIN_PATIENTS` patients of a class has no inner split. With
one configuration it then trains a fixed schedule, the configuration's epoch limit at a constant learning
rate, with no early stopping (still nothing selected on the reported fold), and the run says so in its
warnings; ``--tune`` stops instead, with how many patients it needs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from fastall.errors import FastallError
from fastall.training.config import HeadConfig, HeadResult, Plan, StackData
from fastall.training.engine import train_stacks
from fastall.training.streams import derive_seed

if TYPE_CHECKING:
    from fastall.training.probe import LinearFits

LinearMap = tuple[np.ndarray, np.ndarray]
INNER_SPLITS = 5  # the inner validation share is 1/INNER_SPLITS of a fold's training patients (or more)
MIN_PATIENTS = 2  # per class among a fold's training patients


def inner_splits(
    labels: np.ndarray,
    patients: np.ndarray,
    rows: np.ndarray,
    *,
    seed: int,
    fold: int,
    folds: int = 1,
    what: str = "fold",
    class_names: Sequence[str] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split ``rows`` by patient into (inner training, inner validation) pairs, stratified by class, each side
    holding every class of ``rows``: one split holding out about 1/:data:`INNER_SPLITS` of the patients
    (``folds`` 1), or an inner k-fold (k = ``folds``, at most the fewest patients of a class). FastallError
    when a class has fewer than :data:`MIN_PATIENTS` patients."""
    y, groups = labels[rows], np.asarray(patients, dtype=object)[rows]
    classes = np.unique(y)
    counts = {int(c): np.unique(groups[y == c]).size for c in classes}
    fewest = min(counts.values())
    if fewest < MIN_PATIENTS:
        name = (lambda c: repr(class_names[c])) if class_names else str
        short = ", ".join(f"class {name(c)}: {n}" for c, n in counts.items() if n < MIN_PATIENTS)
        raise FastallError(
            f"{what} {fold}: selection on an inner split needs at least {MIN_PATIENTS} training patients of "
            f"each class ({short}); use fewer --folds, more patients, or --selection fold (optimistic)"
        )
    n = min(INNER_SPLITS if folds == 1 else folds, fewest)
    state = derive_seed(seed, fold, "inner", bits=31)
    sgkf = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        splits = list(sgkf.split(np.zeros(y.size), y, groups))
    full = [
        (np.sort(rows[tr]), np.sort(rows[va]))
        for tr, va in splits
        if np.unique(y[tr]).size == classes.size and np.unique(y[va]).size == classes.size
    ]
    if not full:
        tr, va = splits[0]
        full = [(np.sort(rows[tr]), np.sort(rows[va]))]
    return full[:1] if folds == 1 else full


def _kept_lr(result: HeadResult) -> tuple[float, ...]:
    return tuple(result.history["lr"][: result.best_epoch])


def median_plan_of(plans: Sequence[Plan]) -> Plan:
    """The final head's plan: the median of the folds' epochs (rounded up) and, per epoch, the median of
    their learning rates (a fold's last rate repeats past its end)."""
    epochs = int(math.ceil(np.median([p.epochs for p in plans])))
    return Plan(epochs, tuple(float(np.median([p.lr_at(e) for p in plans])) for e in range(epochs)))


@dataclass
class Selection:
    """What phase 1 chose: per fold the configuration index, its plan and every configuration's inner loss."""

    configs: list[HeadConfig]
    inner: list[list[tuple[np.ndarray, np.ndarray]]]
    chosen: list[int]
    plans: list[Plan]
    final_config: int
    final_plan: Plan
    inner_loss: list[list[float]]  # [fold][config]
    inner_results: list[HeadResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def record(self, patients: np.ndarray) -> dict[str, Any]:
        """metrics.json's ``selection`` (without the configurations, which the caller names)."""
        folds = []
        for k, splits in enumerate(self.inner):
            runs = [r for r in self.inner_results if r.fold == k and r.config == self.chosen[k]]
            if not runs:
                folds.append({"fold": k, "fallback": "fixed schedule", "kept_epoch": self.plans[k].epochs})
                continue
            val = np.concatenate([va for _, va in splits])
            folds.append(
                {
                    "fold": k,
                    "inner_splits": len(splits),
                    "inner_train_images": [int(tr.size) for tr, _ in splits],
                    "inner_val_images": [int(va.size) for _, va in splits],
                    "inner_val_patients": sorted(set(patients[val].tolist())),
                    "chosen_config": self.chosen[k],
                    "inner_val_loss": self.inner_loss[k],
                    "inner_kept_epochs": [r.best_epoch for r in runs],
                    "kept_epoch": self.plans[k].epochs,
                    "epochs_run": [r.epochs_run for r in runs],
                    "history": [r.history for r in runs],
                }
            )
        return {
            "mode": "inner",
            "folds": folds,
            "final_config": self.final_config,
            "final_epochs": self.final_plan.epochs,
            "notes": self.notes,
        }


def select(
    data: StackData,
    configs: Sequence[HeadConfig],
    patients: np.ndarray,
    *,
    seed: int,
    precision: str,
    inner_folds: int = 1,
    linear_init: LinearFits | None = None,
    progress: Callable | None = None,
    class_names: Sequence[str] | None = None,
) -> Selection:
    """Phase 1 (module doc): train every configuration on every fold's inner split(s) and choose
    (``class_names`` name the classes in its notes)."""
    inner: list[list[tuple[np.ndarray, np.ndarray]]] = []
    notes = []
    for k, (train, _) in enumerate(data.folds):
        try:
            split = inner_splits(
                data.labels, patients, train, seed=seed, fold=k, folds=inner_folds, class_names=class_names
            )
            inner.append(split)
        except FastallError as e:
            if len(configs) > 1:
                raise
            inner.append([])
            notes.append(f"{e}: fold {k} trains a fixed schedule, without early stopping")
    owner = [(k, j) for k, splits in enumerate(inner) for j in range(len(splits))]
    sub = replace(
        data,
        folds=[inner[k][j] for k, j in owner],
        pool=np.empty(0, np.int64),
        test=np.empty(0, np.int64),
        plans=None,
        linear_inits=linear_init.many([inner[k][j][0] for k, j in owner]) if linear_init else None,
    )
    results = []
    if owner:
        results = train_stacks(sub, configs, seed=seed, precision=precision, states=False, progress=progress)
    by: dict[tuple[int, int], list[HeadResult]] = {}
    for r in results:
        r.fold = owner[r.fold][0]
        by.setdefault((r.fold, r.config), []).append(r)

    def inner_loss(k: int, c: int) -> float:
        losses = [r.val_loss for r in by.get((k, c), [])]
        ok = [v for v in losses if v is not None and math.isfinite(v)]
        return float(np.mean(ok)) if ok and len(ok) == len(losses) else math.inf

    def plan(k: int, c: int) -> Plan:
        if (k, c) not in by:
            return _fixed(configs[c], data, k)
        return median_plan_of([Plan(r.best_epoch, _kept_lr(r)) for r in by[k, c]])

    loss = [[inner_loss(k, c) for c in range(len(configs))] for k in range(len(inner))]
    chosen = [int(np.argmin(row)) for row in loss]
    plans = [plan(k, c) for k, c in enumerate(chosen)]
    final_config = int(np.argmin(np.mean(loss, axis=0))) if len(configs) > 1 else 0
    final_plan = median_plan_of([plan(k, final_config) for k in range(len(inner))])
    return Selection(list(configs), inner, chosen, plans, final_config, final_plan, loss, results, notes)


def _fixed(config: HeadConfig, data: StackData, fold: int) -> Plan:
    """A fold without an inner split: the configuration's epoch limit at its learning rate."""
    steps = -(-len(data.folds[fold][0]) // config.batch_size)
    return Plan(config.epoch_limit(steps), (config.lr,))


def refit(
    data: StackData,
    sel: Selection,
    *,
    seed: int,
    precision: str,
    tta: bool,
    linear_inits: Sequence[LinearMap] | None = None,
    progress: Callable | None = None,
) -> list[HeadResult]:
    """Phase 2 (module doc): each fold's chosen configuration on all its training rows, and the final head,
    each with its plan. Returns results shaped as one train-head stack's (fold heads, then the final)."""
    out: list[HeadResult] = []
    for c in sorted(set(sel.chosen) | {sel.final_config}):
        ks = [k for k, chosen in enumerate(sel.chosen) if chosen == c]
        final = c == sel.final_config
        sub = replace(
            data,
            folds=[data.folds[k] for k in ks],
            plans=[sel.plans[k] for k in ks],
            final_plan=sel.final_plan if final else None,
            linear_inits=[linear_inits[k] for k in ks] + ([linear_inits[-1]] if final else [])
            if linear_inits
            else None,
        )
        for r in train_stacks(
            sub, [sel.configs[c]], seed=seed, precision=precision, final=final, tta=tta, progress=progress
        ):
            r.config = c
            r.fold = len(data.folds) if r.final else ks[r.fold]
            out.append(r)
    return sorted(out, key=lambda r: (r.final, r.fold))
