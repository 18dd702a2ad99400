"""The linear-probe baseline: a standardised logistic regression on view-0 features, the number to beat.

Every fold fits ``Pipeline(StandardScaler, LogisticRegression(lbfgs))`` on its training rows only, with C
chosen by an inner patient-grouped CV (``StratifiedGroupKFold`` by patient, inside those rows) over
``C_GRID`` by log loss; it then scores the fold's validation rows. The final probe (C chosen the same way on
the whole pool) scores the test rows. The inner search walks C upwards with warm starts and stops once the
inner loss rises, so a real-size cache (10,661 x 2048) costs seconds. Same folds and test set as the head:
the caller passes the row indices. BLAS and OpenMP run on one thread here: lbfgs is a series of
memory-bound matrix-vector products, where more threads only spin (3-7x slower on a busy 2-core machine).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from fastall.features.cache import FeatureCache
from fastall.training.metrics import classification_metrics, summarize
from fastall.training.splits import Splits

C_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
INNER_FOLDS = 3
FALLBACK_C = 0.1
MAX_ITER = 300
MODEL = "StandardScaler + LogisticRegression(lbfgs) on view 0, C by inner patient-grouped CV (log loss)"


@dataclass
class ProbeFit:
    """One fitted probe: its pipeline, the C it chose, and the inner mean log loss of every C tried."""

    pipeline: Pipeline
    c: float
    inner_folds: int
    inner_loss: dict[float, float] = field(default_factory=dict)

    def proba(self, x: np.ndarray, classes: int) -> np.ndarray:
        """``[N, classes]`` probabilities (zero for a class the training rows lacked)."""
        return _full_proba(self.pipeline, x, classes)

    def linear_map(self, classes: int) -> tuple[np.ndarray, np.ndarray]:
        """``(A [classes, D], c [classes])`` on raw (unstandardised) features whose logits ``A x + c`` give
        the probe's probabilities under softmax (binary: logits 0 and z; a class the rows lacked: -30)."""
        scale = self.pipeline.named_steps["scale"]
        model = self.pipeline.named_steps["logreg"]
        sd = np.where(scale.scale_ > 0, scale.scale_, 1.0)
        coef = model.coef_ / sd
        bias = model.intercept_ - coef @ scale.mean_
        present = model.classes_.astype(np.int64)
        a = np.zeros((classes, coef.shape[1]))
        c = np.full(classes, -30.0)
        if len(present) == 2 and coef.shape[0] == 1:
            c[present[0]], a[present[1]], c[present[1]] = 0.0, coef[0], bias[0]
        else:
            a[present], c[present] = coef, bias
        return a, c


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


def _full_proba(model: Pipeline | LogisticRegression, x: np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((x.shape[0], classes), dtype=np.float64)
    out[:, model.classes_.astype(np.int64)] = model.predict_proba(x)
    return out / out.sum(axis=1, keepdims=True)  # float32 features give float32 rounding


def _inner_splits(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple]:
    fewest = min(np.unique(groups[y == k]).size for k in np.unique(y))
    n = min(folds, fewest)
    if n < 2:
        return []
    sgkf = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        splits = list(sgkf.split(np.zeros(y.size), y, groups))
    present = np.unique(y).size
    return [(tr, va) for tr, va in splits if np.unique(y[tr]).size == present]  # warm starts need every class


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
    """Choose C by patient-grouped inner CV on these rows alone, then fit on all of them.

    The rows are standardised once; C goes up the grid and stops once the inner log loss rises (it is
    unimodal in C in practice), so the slow, weakly regularised fits run only when they help. Every fit
    warm-starts from the one before (same rows of this fold only), so most take a few lbfgs steps.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    groups = np.asarray(groups, dtype=object)
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    splits = _inner_splits(y, groups, inner_folds, seed)
    model = LogisticRegression(C=FALLBACK_C, solver="lbfgs", max_iter=MAX_ITER, warm_start=True)
    loss: dict[float, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in sorted(c_grid) if splits else []:
            total = 0.0
            for tr, va in splits:
                model.set_params(C=c).fit(xs[tr], y[tr])
                total += log_loss(y[va], _full_proba(model, xs[va], classes), labels=list(range(classes)))
            loss[float(c)] = total / len(splits)
            if loss[float(c)] > min(loss.values()):
                break
        best = min(loss, key=loss.get) if loss else FALLBACK_C
        model.set_params(C=best).fit(xs, y)
    model.set_params(warm_start=False)
    return ProbeFit(Pipeline([("scale", scaler), ("logreg", model)]), float(best), len(splits), loss)


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
    with threadpool_limits(limits=1):
        return _linear_probe(
            features, labels, groups, folds, test, pool, classes, c_grid, inner_folds, seed, positive
        )


def _linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    test: np.ndarray | None,
    pool: np.ndarray | None,
    classes: int | None,
    c_grid: tuple[float, ...],
    inner_folds: int,
    seed: int,
    positive: int | None,
) -> ProbeResult:
    t0 = time.perf_counter()
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups, dtype=object)
    k = classes or int(labels.max()) + 1
    oof = np.full((labels.size, k), np.nan)
    rows, fits, notes = [], [], []

    def fit_on(rows_: np.ndarray) -> ProbeFit:
        return fit_probe(
            features[rows_],
            labels[rows_],
            groups[rows_],
            classes=k,
            c_grid=c_grid,
            inner_folds=inner_folds,
            seed=seed,
        )

    for i, (train, val) in enumerate(folds):
        fit = fit_on(train)
        oof[val] = fit.proba(np.asarray(features[val], dtype=np.float32), k)
        rows.append(
            {
                "fold": i,
                "c": fit.c,
                "inner_folds": fit.inner_folds,
                **classification_metrics(labels[val], oof[val], k, positive=positive),
            }
        )
        fits.append(fit)
        if fit.inner_folds == 0:
            notes.append(f"fold {i}: too few patients per class for an inner split; C = {FALLBACK_C}")
    done = np.flatnonzero(~np.isnan(oof[:, 0]))
    pooled = classification_metrics(labels[done], oof[done], k, positive=positive)
    test_metrics, test_probs = None, None
    if test is not None and len(test):
        pool = np.unique(np.concatenate([np.concatenate(f) for f in folds])) if pool is None else pool
        fit = fit_on(pool)
        fits.append(fit)
        test_probs = fit.proba(np.asarray(features[test], dtype=np.float32), k)
        test_metrics = {"c": fit.c, **classification_metrics(labels[test], test_probs, k, positive=positive)}
    return ProbeResult(
        folds=rows,
        summary=summarize(rows),
        pooled=pooled,
        oof_probs=oof,
        test=test_metrics,
        test_probs=test_probs,
        fits=fits,
        c_grid=tuple(c_grid),
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
