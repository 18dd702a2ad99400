"""The linear protocol: a standardised logistic regression per outer fold, C chosen over a fine log grid by an
inner patient-grouped K-fold CV on the fold's training patients alone, plus a fixed-C reference.

Every (outer fold, inner split) pair is one problem of a stacked fit (:mod:`.logistic`); the grid is walked
from the strongest regularisation up, each C warm-started from the one before, and a fold leaves the walk once
its inner log loss has not improved for :data:`GRID_PATIENCE` grid points. The chosen C is the one with the
lowest mean inner log loss (as sklearn's ``LogisticRegressionCV``). Not the one-standard-error rule: on a
few noisy patients it chose C near the grid's strong end (1e-4 to 6e-3 on the regret benchmark's Gaussian
sets) and lost up to 0.06 CV accuracy (0.591 against 0.650 on gauss-hard-resnet-scale-s34). The refits
(chosen C and the fixed C, every outer fold and the pool) are one more stacked fit. The inner splits are
train-head's (``selection.inner_splits``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from fastall.errors import FastallError
from fastall.training.protocols.logistic import LogisticFits, Problem, fit_logistic, subset
from fastall.training.selection import inner_splits

C_GRID: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 25))
FIXED_C = 0.1
INNER_FOLDS = 5
GRID_PATIENCE = 4


@dataclass
class LinearResult:
    """Per outer row set (the folds' training rows, then the pool's when there is a test set): the chosen C,
    the inner mean log loss at every C tried (None where not tried), and the refitted probes: problem ``2 i``
    at the chosen C, ``2 i + 1`` at :data:`FIXED_C`."""

    c_grid: tuple[float, ...]
    chosen: list[float]
    inner_folds: list[int]
    inner_loss: list[list[float | None]]
    fits: LogisticFits
    fixed_c: float
    seconds: float
    notes: list[str] = field(default_factory=list)

    def proba(self, i: int, x: torch.Tensor, fixed: bool = False) -> np.ndarray:
        """``[N, K]`` probabilities of row set i's probe (chosen C, or the fixed C) on raw features."""
        return self.fits.proba_one(2 * i + int(fixed), x)


def _log_loss(prob: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(prob[np.arange(y.size), y], 1e-15, None)).mean())


def choose_c(
    x: torch.Tensor,
    labels: np.ndarray,
    patients: np.ndarray,
    row_sets: list[np.ndarray],
    classes: int,
    *,
    seed: int,
    c_grid: tuple[float, ...] = C_GRID,
    inner_folds: int = INNER_FOLDS,
) -> tuple[list[float], list[int], list[list[float | None]], list[str]]:
    """Per row set: the C with the lowest mean inner log loss, the inner split count, the loss curve and
    notes (a row set without an inner split keeps :data:`FIXED_C`)."""
    grid = sorted(c_grid)
    notes, splits = [], []
    for i, rows in enumerate(row_sets):
        try:
            splits.append(inner_splits(labels, patients, rows, seed=seed, fold=i, folds=inner_folds))
        except FastallError:
            splits.append([])
            notes.append(
                f"row set {i}: a class has fewer than 2 training patients, too few for an inner split: the "
                f"linear probe keeps C = {FIXED_C} there"
            )
    owner = [(i, j) for i, s in enumerate(splits) for j in range(len(s))]
    loss: list[list[float | None]] = [[None] * len(grid) for _ in row_sets]
    best = [math.inf] * len(row_sets)
    since = [0] * len(row_sets)
    active = [i for i, s in enumerate(splits) if s]
    fits: LogisticFits | None = None
    fits_index: dict[int, int] = {}
    stats = None
    for g, c in enumerate(grid):
        if not active:
            break
        members = [n for n, (i, _) in enumerate(owner) if i in active]
        problems = [Problem(splits[owner[n][0]][owner[n][1]][0], c) for n in members]
        init = subset(fits, [fits_index[n] for n in members]) if fits is not None else None
        st = None if stats is None else (stats[0][members], stats[1][members])
        fits = fit_logistic(x, labels, problems, classes, init=init, stats=st)
        if stats is None:
            stats = (fits.mean, fits.scale)
        fits_index = {n: k for k, n in enumerate(members)}
        per_set: dict[int, list[float]] = {}
        for k, n in enumerate(members):
            i, j = owner[n]
            va = splits[i][j][1]
            per_set.setdefault(i, []).append(_log_loss(fits.proba_one(k, x[torch.as_tensor(va)]), labels[va]))
        for i, values in per_set.items():
            loss[i][g] = float(np.mean(values))
            if loss[i][g] < best[i] - 1e-9:
                best[i], since[i] = loss[i][g], 0
            else:
                since[i] += 1
        active = [i for i in active if since[i] < GRID_PATIENCE]
    chosen = []
    for i in range(len(row_sets)):
        tried = [(v, g) for g, v in enumerate(loss[i]) if v is not None]
        if not tried:
            chosen.append(FIXED_C)
            continue
        chosen.append(grid[min(tried)[1]])
    return chosen, [len(s) for s in splits], loss, notes


def linear_protocol(
    x: torch.Tensor,
    labels: np.ndarray,
    patients: np.ndarray,
    row_sets: list[np.ndarray],
    classes: int,
    *,
    seed: int,
    c_grid: tuple[float, ...] = C_GRID,
    fixed_c: float = FIXED_C,
    inner_folds: int = INNER_FOLDS,
) -> LinearResult:
    """C by inner CV for each row set, then both refits of every row set as one stacked fit."""
    t0 = time.perf_counter()
    chosen, n_inner, loss, notes = choose_c(
        x, labels, patients, row_sets, classes, seed=seed, c_grid=c_grid, inner_folds=inner_folds
    )
    pairs = zip(row_sets, chosen, strict=True)
    problems = [Problem(rows, c) for rows, best in pairs for c in (best, fixed_c)]
    fits = fit_logistic(x, labels, problems, classes)
    if not fits.converged.all():
        notes.append(f"{int((~fits.converged).sum())} linear refit(s) stopped before the gradient tolerance")
    grid = tuple(sorted(c_grid))
    edge = [i for i, (c, n) in enumerate(zip(chosen, n_inner, strict=True)) if n and c in (grid[0], grid[-1])]
    if edge:
        notes.append(
            f"the linear probe's C is at the end of its grid ({grid[0]:g}..{grid[-1]:g}) in row set(s) "
            f"{', '.join(map(str, edge))}: a wider grid (c_grid) may fit better"
        )
    return LinearResult(grid, chosen, n_inner, loss, fits, fixed_c, time.perf_counter() - t0, notes)
