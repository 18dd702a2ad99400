"""The linear-probe baseline of train-head, sweep and compare: the linear protocol of `fastall probe`.

Every fold's probe is :func:`fastall.training.protocols.linear.linear_protocol`'s: a standardised logistic
regression on view 0 fitted on the fold's training rows only, with C over the protocol's fine log grid chosen
by an inner patient-grouped K-fold CV inside those rows (the lowest inner log loss), all
folds and the final probe (on the pool, scoring the test rows) one stacked fit. This module only shapes its
result for train-head: per-fold metrics, pooled out-of-fold probabilities and each probe's linear map on raw
features. Same folds and test set as the head: the caller passes the row indices. A row set lacking a class
is fitted on the classes it has; the missing class gets probability 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from fastall.features.cache import FeatureCache
from fastall.training.metrics import classification_metrics, summarize
from fastall.training.protocols.linear import C_GRID, FIXED_C, INNER_FOLDS, linear_protocol
from fastall.training.splits import Splits

__all__ = [
    "C_GRID",
    "FIXED_C",
    "INNER_FOLDS",
    "LinearFits",
    "ProbeFit",
    "ProbeResult",
    "fit_probe",
    "linear_probe",
]

MODEL = (
    "StandardScaler + logistic regression on view 0 (fastall probe's linear protocol), C over a "
    f"{len(C_GRID)}-point log grid by inner patient-grouped {INNER_FOLDS}-fold CV (lowest log loss)"
)


@dataclass
class ProbeFit:
    """One fitted probe on standardised features: ``coef [cols, D]`` and ``intercept [cols]`` (``cols`` = 1
    for two classes, as sklearn's), the scaler's ``mean``, ``scale [D]``, the classes it was fitted on, the C
    it chose, its inner split count and the inner mean log loss of every C tried."""

    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    present: np.ndarray
    c: float
    inner_folds: int
    inner_loss: dict[float, float] = field(default_factory=dict)

    def linear_map(self, classes: int) -> tuple[np.ndarray, np.ndarray]:
        """``(A [classes, D], c [classes])`` on raw (unstandardised) features whose logits ``A x + c`` give
        the probe's probabilities under softmax (binary: logits 0 and z; a class the rows lacked: -30)."""
        coef = self.coef / self.scale
        bias = self.intercept - coef @ self.mean
        a = np.zeros((classes, coef.shape[1]))
        c = np.full(classes, -30.0)
        if len(self.present) == 2 and coef.shape[0] == 1:
            c[self.present[0]], a[self.present[1]], c[self.present[1]] = 0.0, coef[0], bias[0]
        else:
            a[self.present], c[self.present] = coef, bias
        return a, c

    def proba(self, x: np.ndarray, classes: int) -> np.ndarray:
        """``[N, classes]`` probabilities (zero for a class the training rows lacked)."""
        a, c = self.linear_map(classes)
        z = np.asarray(x, dtype=np.float64) @ a.T + c
        z[:, np.setdiff1d(np.arange(classes), self.present)] = -np.inf
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)


@dataclass
class ProbeResult:
    """Per-fold metrics (with the chosen C), their summary, pooled out-of-fold probabilities (NaN on rows
    that validate in no fold), and the final probe's test metrics (None without a test set)."""

    folds: list[dict]
    summary: dict
    pooled: dict
    oof_probs: np.ndarray
    test: dict | None
    test_probs: np.ndarray | None
    fits: list[ProbeFit]
    c_grid: tuple[float, ...]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """What metrics.json holds (``fastall.system.jsonable.plain`` it before dumping)."""
        return {
            "model": MODEL,
            "c_grid": list(self.c_grid),
            "folds": self.folds,
            "summary": self.summary,
            "pooled": self.pooled,
            "test": self.test,
            "final_c": self.fits[-1].c if self.test is not None else None,
            "notes": self.notes,
        }


def _fit_row_sets(
    features: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    row_sets: list[np.ndarray],
    classes: int,
    c_grid: tuple[float, ...],
    inner_folds: int,
    seed: int,
) -> tuple[list[ProbeFit], list[str]]:
    """The linear protocol on every row set (one stacked call per set of classes present)."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    fits: list[ProbeFit | None] = [None] * len(row_sets)
    notes: list[str] = []
    by_present: dict[tuple[int, ...], list[int]] = {}
    for i, rows in enumerate(row_sets):
        by_present.setdefault(tuple(np.unique(labels[rows]).tolist()), []).append(i)
    for present, members in by_present.items():
        code = np.full(max(classes, int(labels.max()) + 1), -1, dtype=np.int64)
        code[list(present)] = np.arange(len(present))
        local = np.where(labels >= 0, code[np.clip(labels, 0, None)], -1)
        res = linear_protocol(
            x, local, groups, [row_sets[i] for i in members], max(len(present), 2),
            seed=seed, c_grid=c_grid, inner_folds=inner_folds,
        )  # fmt: skip
        notes += [n for n in res.notes if "row set" not in n]
        for j, i in enumerate(members):
            loss = {float(c): v for c, v in zip(res.c_grid, res.inner_loss[j], strict=True) if v is not None}
            fits[i] = ProbeFit(
                coef=res.fits.sklearn_coef(2 * j),
                intercept=res.fits.intercept[2 * j].double().cpu().numpy(),
                mean=res.fits.mean[2 * j].double().cpu().numpy(),
                scale=res.fits.scale[2 * j].double().cpu().numpy(),
                present=np.asarray(present, dtype=np.int64),
                c=float(res.chosen[j]),
                inner_folds=int(res.inner_folds[j]),
                inner_loss=loss,
            )
    return fits, notes


def fit_probe(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    classes: int,
    c_grid: tuple[float, ...] = C_GRID,
    inner_folds: int = INNER_FOLDS,
    seed: int = 0,
) -> ProbeFit:
    """The linear protocol's probe on these rows alone: C by patient-grouped inner CV on them (``FIXED_C``
    when a class has fewer than 2 patients), then fitted on all of them."""
    y = np.asarray(y, dtype=np.int64)
    rows = np.arange(y.size)
    fits, _ = _fit_row_sets(
        x, y, np.asarray(groups, dtype=object), [rows], classes, c_grid, inner_folds, seed
    )
    return fits[0]


class LinearFits:
    """rows -> the linear map ``(A [K, D], c [K])`` of :func:`fit_probe` on those rows of ``features`` alone
    (C by inner CV on them). Each row set is fitted once; :meth:`many` fits every new one together, as one
    stacked problem (the default preset's choice asks for 5 x 5 inner training sets at once)."""

    def __init__(
        self, features: np.ndarray, labels: np.ndarray, groups: np.ndarray, classes: int, seed: int
    ) -> None:
        self.features, self.labels, self.classes, self.seed = features, labels, classes, seed
        self.groups = np.asarray(groups, dtype=object)
        self._maps: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def many(self, row_sets: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        sets = [np.asarray(rows, dtype=np.int64) for rows in row_sets]
        keys = [rows.tobytes() for rows in sets]
        new = {key: rows for key, rows in zip(keys, sets, strict=True) if key not in self._maps}
        if new:
            with threadpool_limits(limits=1):
                fits, _ = _fit_row_sets(
                    self.features, self.labels, self.groups, list(new.values()), self.classes,
                    C_GRID, INNER_FOLDS, self.seed,
                )  # fmt: skip
            for key, fit in zip(new, fits, strict=True):
                self._maps[key] = fit.linear_map(self.classes)
        return [self._maps[key] for key in keys]

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.many([rows])[0]


def linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    *,
    test: np.ndarray | None = None,
    pool: np.ndarray | None = None,
    classes: int | None = None,
    c_grid: tuple[float, ...] = C_GRID,
    inner_folds: int = INNER_FOLDS,
    seed: int = 0,
    positive: int | None = 1,
) -> ProbeResult:
    """Cross-validate the probe on ``folds`` (row indices into ``features [N, D]``, view 0) and, with a
    ``test`` set, fit the final probe on ``pool`` (default: every fold row) and score ``test``; metrics
    with ``positive`` as the positive class index (``classification_metrics``)."""
    t0 = time.perf_counter()
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups, dtype=object)
    k = classes or int(labels.max()) + 1
    has_test = test is not None and len(test) > 0
    row_sets = [np.asarray(train) for train, _ in folds]
    if has_test:
        pool = np.unique(np.concatenate([np.concatenate(f) for f in folds])) if pool is None else pool
        row_sets.append(np.asarray(pool))
    fits, notes = _fit_row_sets(features, labels, groups, row_sets, k, c_grid, inner_folds, seed)
    oof = np.full((labels.size, k), np.nan)
    rows = []
    for i, (_, val) in enumerate(folds):
        fit = fits[i]
        oof[val] = fit.proba(features[val], k)
        metrics = classification_metrics(labels[val], oof[val], k, positive=positive)
        rows.append({"fold": i, "c": fit.c, "inner_folds": fit.inner_folds, **metrics})
        if fit.inner_folds == 0:
            notes.append(f"fold {i}: too few patients per class for an inner split; C = {FIXED_C}")
    done = np.flatnonzero(~np.isnan(oof[:, 0]))
    pooled = classification_metrics(labels[done], oof[done], k, positive=positive)
    test_metrics, test_probs = None, None
    if has_test:
        test_probs = fits[-1].proba(features[test], k)
        test_metrics = {
            "c": fits[-1].c,
            **classification_metrics(labels[test], test_probs, k, positive=positive),
        }
    return ProbeResult(
        folds=rows,
        summary=summarize(rows),
        pooled=pooled,
        oof_probs=oof,
        test=test_metrics,
        test_probs=test_probs,
        fits=fits,
        c_grid=tuple(sorted(c_grid)),
        seconds=time.perf_counter() - t0,
        notes=notes,
    )


def probe_cache(cache: FeatureCache, splits: Splits, **kwargs) -> ProbeResult:
    """:func:`linear_probe` on view 0 of a cache with the head's splits (``make_splits``)."""
    return linear_probe(
        cache.features[:, 0],
        cache.labels,
        cache.patients,
        splits.folds,
        test=splits.test,
        pool=splits.pool,
        classes=len(cache.class_names),
        seed=splits.seed,
        **kwargs,
    )
