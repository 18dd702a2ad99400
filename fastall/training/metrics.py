"""The paper's metrics and the clinical ones, all from sklearn: per split, and summarised over folds.

Binary: the positive class is label 1 (ALL in C-NMC 2019); more classes: macro averages and one-vs-rest AUC.
Clinical metrics (with ``detail``): balanced accuracy, specificity (recall of class 0), NPV (precision of
class 0), MCC, weighted F1 (the C-NMC 2019 challenge's ranking metric), Brier score and the precision-recall
AUC (average precision). NaN policy: a metric that is undefined on a split is NaN in Python and ``null`` in
JSON: AUC and PR AUC with one class only, specificity without negatives, NPV without predicted negatives,
specificity and NPV with more than two classes. Precision, recall and F1 keep sklearn's 0 for an empty
denominator; MCC is 0 there, as in sklearn.

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
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    matthews_corrcoef,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.preprocessing import label_binarize

from fastall.reporting.paper import PAPER_CV, PAPER_TEST  # noqa: F401  (re-exported for training)

METRICS = ("accuracy", "precision", "recall", "f1", "auc")
CLINICAL = ("balanced_accuracy", "specificity", "npv", "mcc", "f1_weighted", "brier", "pr_auc")


def classification_metrics(
    y_true: np.ndarray, prob: np.ndarray, classes: int | None = None, detail: bool = True
) -> dict:
    """accuracy, precision, recall, F1 and ROC AUC of ``prob [N, K]``; with ``detail`` also the clinical
    metrics (``CLINICAL``), the log loss and the confusion matrix."""
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
        out.update(clinical_metrics(y_true, y_pred, prob, labels))
        out["log_loss"] = float(log_loss(y_true, prob, labels=labels)) if y_true.size else math.nan
        out["confusion"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return out


def clinical_metrics(y_true: np.ndarray, y_pred: np.ndarray, prob: np.ndarray, labels: list[int]) -> dict:
    """The ``CLINICAL`` metrics of predictions ``y_pred`` and normalised probabilities ``prob [N, K]``."""
    if not y_true.size:
        return dict.fromkeys(CLINICAL, math.nan)
    binary = len(labels) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "specificity": math.nan,
            "npv": math.nan,
            "mcc": float(matthews_corrcoef(y_true, y_pred)),
            "f1_weighted": float(
                f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
            ),
            "brier": _brier(y_true, prob, labels),
            "pr_auc": _pr_auc(y_true, prob, labels),
        }
        if binary:
            negative = {"pos_label": 0, "average": "binary", "zero_division": np.nan}
            out["specificity"] = float(recall_score(y_true, y_pred, **negative))
            out["npv"] = float(precision_score(y_true, y_pred, **negative))
    return out


def _brier(y_true: np.ndarray, prob: np.ndarray, labels: list[int]) -> float:
    if len(labels) == 2:
        return float(brier_score_loss(y_true, prob[:, 1], pos_label=1))
    try:
        return float(brier_score_loss(y_true, prob, labels=labels))
    except (TypeError, ValueError):
        return math.nan


def _pr_auc(y_true: np.ndarray, prob: np.ndarray, labels: list[int]) -> float:
    if np.unique(y_true).size < 2:
        return math.nan
    if len(labels) == 2:
        return float(average_precision_score(y_true, prob[:, 1]))
    onehot = label_binarize(y_true, classes=labels)
    present = onehot.sum(0) > 0
    scores = [average_precision_score(onehot[:, c], prob[:, c]) for c in np.flatnonzero(present)]
    return float(np.mean(scores))


def _auc(y_true: np.ndarray, prob: np.ndarray, labels: list[int]) -> float:
    if np.unique(y_true).size < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if len(labels) == 2:
                return float(roc_auc_score(y_true, prob[:, 1]))
            return float(roc_auc_score(y_true, prob, multi_class="ovr", average="macro", labels=labels))
        except ValueError:
            return math.nan


def summarize(per_fold: Sequence[dict], names: Sequence[str] = (*METRICS, *CLINICAL, "log_loss")) -> dict:
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
