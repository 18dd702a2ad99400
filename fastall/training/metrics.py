"""The paper's metrics, all from sklearn: per split, and summarised over folds (mean ± std, peak fold).

Binary: the positive class is label 1 (ALL in C-NMC 2019); more classes: macro averages and one-vs-rest AUC.
An undefined AUC (one class only in the split) is NaN in Python and ``null`` in JSON.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

METRICS = ("accuracy", "precision", "recall", "f1", "auc")

# The paper's Table II (5-fold CV) and Table III (held-out test), as fractions.
PAPER_CV = {
    "peak_accuracy": 0.9739,
    "accuracy": 0.9663,
    "accuracy_std": 0.008,
    "precision": 0.952,
    "recall": 0.948,
    "f1": 0.95,
    "auc": 0.98,
}
PAPER_TEST = {"accuracy": 0.9543, "precision": 0.950, "recall": 0.955, "f1": 0.95, "auc": 0.98}


def classification_metrics(
    y_true: np.ndarray, prob: np.ndarray, classes: int | None = None, detail: bool = True
) -> dict:
    """accuracy, precision, recall, F1 and ROC AUC of ``prob [N, K]``; with ``detail`` also the log loss and
    the confusion matrix."""
    y_true = np.asarray(y_true, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    prob = prob / np.clip(prob.sum(1, keepdims=True), 1e-12, None)
    k = classes or prob.shape[1]
    labels = list(range(k))
    y_pred = prob.argmax(1)
    avg = {"average": "binary", "pos_label": 1} if k == 2 else {"average": "macro", "labels": labels}
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, zero_division=0, **avg)
    out = {
        "n": int(y_true.size),
        "accuracy": float(accuracy_score(y_true, y_pred)) if y_true.size else math.nan,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auc": _auc(y_true, prob, labels),
    }
    if detail:
        out["log_loss"] = float(log_loss(y_true, prob, labels=labels)) if y_true.size else math.nan
        out["confusion"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return out


def _auc(y_true: np.ndarray, prob: np.ndarray, labels: list[int]) -> float:
    if np.unique(y_true).size < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if len(labels) == 2:
                return float(roc_auc_score(y_true, prob[:, 1]))
            p = prob / prob.sum(1, keepdims=True)
            return float(roc_auc_score(y_true, p, multi_class="ovr", average="macro", labels=labels))
        except ValueError:
            return math.nan


def summarize(per_fold: Sequence[dict]) -> dict:
    """Mean and sample std (ddof=1) of each metric over folds, and the peak (highest-accuracy) fold."""
    out: dict = {}
    for name in (*METRICS, "log_loss"):
        values = np.array([f.get(name, math.nan) for f in per_fold], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[name] = float(finite.mean()) if finite.size else math.nan
        std = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
        out[f"{name}_std"] = std if finite.size else math.nan
    acc = [f.get("accuracy", math.nan) for f in per_fold]
    peak = int(np.nanargmax(acc)) if np.isfinite(acc).any() else 0
    out["peak_fold"] = peak
    out["peak_accuracy"] = float(acc[peak]) if per_fold else math.nan
    return out


def json_safe(value):
    """NaN/inf -> None, numpy scalars -> Python, recursively (``json.dumps(..., allow_nan=False)`` works)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
