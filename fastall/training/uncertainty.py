"""95% confidence intervals by patient-level bootstrap: patients are resampled with replacement, never images.

A resample is a count per patient (how often it was drawn), so every metric of a resample is a function of
per-patient sums: confusion counts, Brier sums, and for the ranking metrics a patient × patient table of
correctly ordered (positive, negative) pairs (ROC AUC) or per-patient cumulative counts at each positive score
(average precision). All 1,000 resamples are then a few matrix products instead of 12,000 sklearn calls; the
definitions are those of :func:`fastall.training.metrics.classification_metrics` (a test checks both against a
plain loop over resampled patients). Intervals are percentile intervals; a resample where a metric is
undefined (one class only) is left out of that metric's interval. With fewer than ``MIN_PATIENTS`` patients
no interval is given: it is marked unreliable.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from fastall.training.metrics import classification_metrics

RESAMPLES = 1000
LEVEL = 0.95
MIN_PATIENTS = 10
CI_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "recall",
    "specificity",
    "precision",
    "npv",
    "f1",
    "f1_weighted",
    "mcc",
    "auc",
    "pr_auc",
    "brier",
)
ONE_SIDED = ("recall", "specificity", "precision", "npv", "f1", "pr_auc")
_BLOCK = 128


def resample_patients(n_patients: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[resamples, n_patients]`` patient indices drawn with replacement (seeded, deterministic)."""
    rng = np.random.default_rng([seed, 0xB0075])
    return rng.integers(0, n_patients, size=(resamples, n_patients))


def bootstrap_intervals(
    y_true: np.ndarray,
    prob: np.ndarray,
    patients: np.ndarray,
    *,
    classes: int | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
    positive: int | None = 1,
) -> dict:
    """Percentile intervals of ``CI_METRICS`` over patient resamples, or a note that they are unreliable.
    Two classes: ``positive`` is the positive class index; with None the metrics that depend on which class
    is positive (``ONE_SIDED``) get no interval."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(prob, dtype=np.float64)
    p = p / np.clip(p.sum(1, keepdims=True), 1e-12, None)
    k = classes or p.shape[1]
    if k == 2 and positive == 0:
        y, p = 1 - y, p[:, ::-1]
    uniq, codes = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    n = len(uniq)
    out = {
        "method": "patient bootstrap, percentile",
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "patients": n,
        "reliable": n >= MIN_PATIENTS,
    }
    if n < MIN_PATIENTS:
        return {
            **out,
            "intervals": None,
            "note": f"unreliable: {n} patient{'s' * (n != 1)} (fewer than {MIN_PATIENTS})",
        }
    draws = resample_patients(n, resamples, seed)
    counts = np.bincount((draws + n * np.arange(resamples)[:, None]).ravel(), minlength=resamples * n)
    values = resampled_metrics(counts.reshape(resamples, n).astype(np.float64), y, p, codes.reshape(-1), k)
    tail = 100 * (1 - level) / 2
    intervals = {}
    for name in CI_METRICS:
        v = values[name]
        v = v[np.isfinite(v)]
        intervals[name] = [float(x) for x in np.percentile(v, [tail, 100 - tail])] if v.size else None
    if k == 2 and positive is None:
        intervals.update(dict.fromkeys(ONE_SIDED))
    return {**out, "intervals": intervals}


def metrics_with_ci(
    y_true: np.ndarray,
    prob: np.ndarray,
    patients: np.ndarray,
    classes: int,
    *,
    seed: int = 0,
    positive: int | None = 1,
) -> dict:
    """``classification_metrics`` plus ``"ci"``: their patient-level bootstrap intervals."""
    return {
        **classification_metrics(y_true, prob, classes, positive=positive),
        "ci": bootstrap_intervals(y_true, prob, patients, classes=classes, seed=seed, positive=positive),
    }


def pooled_with_ci(
    labels: np.ndarray,
    patients: np.ndarray,
    parts: list[tuple[np.ndarray, np.ndarray]],
    classes: int,
    *,
    seed: int = 0,
    positive: int | None = 1,
) -> dict:
    """``metrics_with_ci`` of several ``(rows, prob)`` parts together: the pooled out-of-fold predictions."""
    rows = np.concatenate([r for r, _ in parts])
    prob = np.concatenate([p for _, p in parts])
    return metrics_with_ci(labels[rows], prob, patients[rows], classes, seed=seed, positive=positive)


def resampled_metrics(
    counts: np.ndarray, y: np.ndarray, prob: np.ndarray, codes: np.ndarray, k: int
) -> dict[str, np.ndarray]:
    """Each of ``CI_METRICS`` for every resample; ``counts [B, P]``: how often each patient was drawn."""
    n = counts.shape[1]
    pred = prob.argmax(1)
    per_patient = np.bincount(codes * k * k + y * k + pred, minlength=n * k * k).reshape(n, k * k)
    out = _confusion_metrics((counts @ per_patient).reshape(-1, k, k))
    onehot = np.eye(k)[y]
    loss = ((prob - onehot) ** 2).sum(1) * (0.5 if k == 2 else 1.0)
    images = counts @ np.bincount(codes, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["brier"] = (counts @ np.bincount(codes, weights=loss, minlength=n)) / images
    if k == 2:
        out["auc"] = _auc(counts, y == 1, prob[:, 1], codes)
        out["pr_auc"] = _average_precision(counts, y == 1, prob[:, 1], codes)
    else:
        per_class = [(_auc(counts, y == c, prob[:, c], codes), c) for c in range(k)]
        out["auc"] = np.mean([a for a, _ in per_class], axis=0)
        ap = np.array([_average_precision(counts, y == c, prob[:, c], codes) for c in range(k)])
        out["pr_auc"] = np.nanmean(np.where(np.isfinite(ap), ap, np.nan), axis=0)
    return out


def _ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), empty)


def _confusion_metrics(m: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of confusion matrices ``m [B, K, K]`` (rows true, columns predicted), defined as in sklearn."""
    k = m.shape[1]
    diag = np.diagonal(m, axis1=1, axis2=2)
    support, predicted = m.sum(2), m.sum(1)
    total = support.sum(1)
    recall = _ratio(diag, support, math.nan)
    precision = _ratio(diag, predicted, math.nan)
    f1 = _ratio(2 * diag, support + predicted, math.nan)
    with np.errstate(invalid="ignore"):
        balanced = np.nanmean(np.where(support > 0, recall, np.nan), axis=1)
    cov_tp = diag.sum(1) * total - (support * predicted).sum(1)
    cov_pp = total**2 - (predicted**2).sum(1)
    cov_tt = total**2 - (support**2).sum(1)
    out = {
        "accuracy": _ratio(diag.sum(1), total, math.nan),
        "balanced_accuracy": balanced,
        "f1_weighted": _ratio((support * np.nan_to_num(f1)).sum(1), total, 0.0),
        "mcc": _ratio(cov_tp, np.sqrt(cov_pp * cov_tt), 0.0),
    }
    if k == 2:
        out.update(
            recall=recall[:, 1],
            precision=precision[:, 1],
            f1=f1[:, 1],
            specificity=_ratio(m[:, 0, 0], support[:, 0], math.nan),
            npv=_ratio(m[:, 0, 0], predicted[:, 0], math.nan),
        )
    else:
        nan = np.full(m.shape[0], math.nan)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            macro = {
                name: np.nanmean(v, axis=1)
                for name, v in (("recall", recall), ("precision", precision), ("f1", f1))
            }
        out.update(**macro, specificity=nan, npv=nan)
    return out


def _auc(counts: np.ndarray, positive: np.ndarray, score: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """ROC AUC (Mann-Whitney, ties count half) of every resample from ``pairs[p, q]``: the correctly ordered
    (positive of patient p, negative of patient q) pairs."""
    n = counts.shape[1]
    pos_score, pos_code = score[positive], codes[positive]
    pairs = np.zeros((n, n))
    for q in np.unique(codes[~positive]):
        neg = np.sort(score[~positive & (codes == q)])
        below = np.searchsorted(neg, pos_score, "left")
        ties = np.searchsorted(neg, pos_score, "right") - below
        pairs[:, q] = np.bincount(pos_code, weights=below + 0.5 * ties, minlength=n)
    n_pos = counts @ np.bincount(pos_code, minlength=n)
    n_neg = counts @ np.bincount(codes[~positive], minlength=n)
    ordered = ((counts @ pairs) * counts).sum(1)
    return _ratio(ordered, n_pos * n_neg, math.nan)


def _average_precision(
    counts: np.ndarray, positive: np.ndarray, score: np.ndarray, codes: np.ndarray
) -> np.ndarray:
    """sklearn's average precision, sum over thresholds t of ΔRecall(t) · Precision(t), for every resample.
    Only the positives' distinct scores add recall; at each, the per-patient counts at or above it."""
    n = counts.shape[1]
    thresholds = np.unique(score[positive])
    tp_at = np.zeros((n, thresholds.size))
    tp_above = np.zeros((n, thresholds.size))
    all_above = np.zeros((n, thresholds.size))
    for p in range(n):
        mine = codes == p
        pos = np.sort(score[mine & positive])
        everything = np.sort(score[mine])
        left, right = np.searchsorted(pos, thresholds, "left"), np.searchsorted(pos, thresholds, "right")
        tp_above[p] = pos.size - left
        tp_at[p] = right - left
        all_above[p] = everything.size - np.searchsorted(everything, thresholds, "left")
    n_pos = counts @ tp_above[:, 0] if thresholds.size else np.zeros(counts.shape[0])
    has_neg = (counts @ np.bincount(codes[~positive], minlength=n)) > 0
    total = np.zeros(counts.shape[0])
    for start in range(0, counts.shape[0], _BLOCK):
        c = counts[start : start + _BLOCK]
        gain = c @ tp_at
        with np.errstate(invalid="ignore", divide="ignore"):
            total[start : start + _BLOCK] = np.nansum(gain * (c @ tp_above) / (c @ all_above), axis=1)
    ap = _ratio(total, n_pos, math.nan)
    return np.where(has_neg, ap, math.nan)
