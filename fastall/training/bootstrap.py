"""Patient-level bootstrap of the ROC AUC, paired across models.

A replicate draws patients with replacement within each class (every replicate keeps the data's number of
patients per class), and weights each image by how often its patient was drawn. The same draws serve every
model compared, so a difference between two models is bootstrapped on the same resampled patients (a paired
bootstrap). The AUC of every replicate is a weighted Mann-Whitney statistic over tie blocks of the sorted
scores: :func:`replicate_aucs` equals ``sklearn.metrics.roc_auc_score`` on the resampled images.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

from fastall.errors import FastallError

N_BOOT = 2000
LEVEL = 0.95
_CHUNK = 128


def patient_codes(patients: np.ndarray) -> np.ndarray:
    """int ``[N]``: each image's patient as an index into the sorted distinct patients."""
    return np.unique(np.asarray(patients).astype(str), return_inverse=True)[1].reshape(-1)


def bootstrap_counts(groups: np.ndarray, labels: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """int ``[n_boot, P]``: how often each patient (``groups`` codes 0..P-1) is drawn in each replicate.

    Patients are drawn with replacement within their class (the label of their first image)."""
    groups, labels = np.asarray(groups), np.asarray(labels)
    n_patients = int(groups.max()) + 1
    first = np.full(n_patients, -1)
    first[groups[::-1]] = np.arange(len(groups))[::-1]
    strata = labels[first]
    rng = np.random.default_rng([seed, 0xB007])
    counts = np.zeros((n_boot, n_patients), dtype=np.int64)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        draws = rng.integers(0, len(members), size=(n_boot, len(members)))
        flat = (draws + np.arange(n_boot)[:, None] * len(members)).ravel()
        counts[:, members] = np.bincount(flat, minlength=n_boot * len(members)).reshape(n_boot, -1)
    return counts


def replicate_aucs(
    labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """float ``[B]``: the binary AUC (label 1 positive) of each replicate's patient weights ``counts``."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    ranked = scores[order]
    positive = (labels[order] == 1).astype(np.float64)
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    image_groups = np.asarray(groups)[order]
    out = np.empty(len(counts))
    for lo in range(0, len(counts), _CHUNK):
        w = counts[lo : lo + _CHUNK][:, image_groups].astype(np.float64)
        pos = np.add.reduceat(w * positive, starts, axis=1)
        neg = np.add.reduceat(w * (1 - positive), starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo : lo + _CHUNK] = (pos * (below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))
    return out


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def _check_binary(labels: np.ndarray) -> None:
    present = set(np.unique(labels).tolist())
    if not present <= {0, 1} or len(present) < 2:
        raise FastallError(
            f"the AUC bootstrap needs two classes labelled 0 and 1, got labels {sorted(present)}"
        )


def auc_with_ci(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, float]:
    """The pooled AUC and its patient-bootstrap percentile interval."""
    labels = np.asarray(labels)
    _check_binary(labels)
    counts = bootstrap_counts(groups, labels, n_boot, seed)
    low, high = _interval(replicate_aucs(labels, scores, groups, counts), level)
    return {"auc": float(roc_auc_score(labels, scores)), "low": low, "high": high}


def paired_auc_difference(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    groups: np.ndarray,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, float | bool]:
    """AUC(a) - AUC(b) on the same images, with a paired patient-bootstrap interval.

    ``distinguishable``: the interval excludes zero."""
    labels = np.asarray(labels)
    _check_binary(labels)
    counts = bootstrap_counts(groups, labels, n_boot, seed)
    diffs = replicate_aucs(labels, scores_a, groups, counts) - replicate_aucs(
        labels, scores_b, groups, counts
    )
    low, high = _interval(diffs, level)
    diff = float(roc_auc_score(labels, scores_a) - roc_auc_score(labels, scores_b))
    return {"difference": diff, "low": low, "high": high, "distinguishable": bool(low > 0 or high < 0)}
