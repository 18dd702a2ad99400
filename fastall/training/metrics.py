"""The paper's metrics, all from sklearn: per split, and summarised over folds (mean ± std, peak fold).

Binary: the positive class is label 1 (ALL in C-NMC 2019); more classes: macro averages and one-vs-rest AUC.

NaN policy: a value that is undefined is NaN in Python and ``null`` in JSON
(``fastall.system.jsonable.plain``), never a made-up number. An AUC is undefined when the split holds one
class only. A summary's mean over folds skips undefined values and is undefined when every fold's is; its
standard deviation (ddof 1) is undefined for fewer than two folds with a defined value (one fold has no
spread to estimate), in train-head and sweep alike (``summarize`` is the one owner).
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


def summarize(per_fold: Sequence[dict], names: Sequence[str] = (*METRICS, "log_loss")) -> dict:
    """Mean and sample std (ddof=1) of each of ``names`` over folds (the NaN policy above), and the peak
    (highest-accuracy) fold."""
    out: dict = {}
    for name in names:
        values = np.array([f.get(name, math.nan) for f in per_fold], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[name] = float(finite.mean()) if finite.size else math.nan
        out[f"{name}_std"] = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
    acc = [f.get("accuracy", math.nan) for f in per_fold]
    peak = int(np.nanargmax(acc)) if np.isfinite(acc).any() else 0
    out["peak_fold"] = peak
    out["peak_accuracy"] = float(acc[peak]) if per_fold else math.nan
    return out
