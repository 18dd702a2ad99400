"""The paired patient bootstrap of an AUC difference between two models scored on the same images.

Each resample draws patients with replacement exactly as :mod:`fastall.training.uncertainty` does (same seed,
same draws as the intervals train-head records), and both models are scored on that same resample, so the
interval of the difference accounts for the patients they share. A resample with one class only has no AUC
and is left out.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

from fastall.errors import FastallError
from fastall.training.uncertainty import LEVEL, RESAMPLES, resample_patients, resampled_metrics


def patient_codes(patients: np.ndarray) -> np.ndarray:
    """int ``[N]``: each image's patient as an index into the sorted distinct patients."""
    return np.unique(np.asarray(patients).astype(str), return_inverse=True)[1].reshape(-1)


def patient_counts(n_patients: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """float ``[resamples, n_patients]``: how often each patient is drawn in each resample."""
    draws = resample_patients(n_patients, resamples, seed)
    flat = (draws + n_patients * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n_patients).reshape(resamples, -1).astype(np.float64)


def replicate_aucs(
    labels: np.ndarray, scores: np.ndarray, codes: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """float ``[B]``: the binary AUC (label 1 positive) of ``scores`` in each resample ``counts [B, P]``."""
    scores = np.asarray(scores, dtype=np.float64)
    prob = np.stack([1 - scores, scores], axis=1)
    return resampled_metrics(counts, np.asarray(labels, dtype=np.int64), prob, codes, 2)["auc"]


def paired_auc_difference(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    patients: np.ndarray,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, float | bool | int]:
    """AUC(a) - AUC(b) on the same images, with its paired patient-bootstrap percentile interval.

    ``distinguishable``: the interval excludes zero."""
    labels = np.asarray(labels)
    present = set(np.unique(labels).tolist())
    if present != {0, 1}:
        raise FastallError(f"the paired AUC bootstrap needs labels 0 and 1, got {sorted(present)}")
    codes = patient_codes(patients)
    counts = patient_counts(int(codes.max()) + 1, resamples, seed)
    diffs = replicate_aucs(labels, scores_a, codes, counts) - replicate_aucs(labels, scores_b, codes, counts)
    diffs = diffs[np.isfinite(diffs)]
    tail = 100 * (1 - level) / 2
    low, high = (
        (float(v) for v in np.percentile(diffs, [tail, 100 - tail])) if diffs.size else (math.nan,) * 2
    )
    return {
        "difference": float(roc_auc_score(labels, scores_a) - roc_auc_score(labels, scores_b)),
        "low": low,
        "high": high,
        "distinguishable": bool(low > 0 or high < 0),
        "resamples": int(diffs.size),
    }
