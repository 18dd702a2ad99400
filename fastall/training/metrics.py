"""The paper's metrics and the clinical ones, all from sklearn: per split, and summarised over folds.

Binary: the positive class is the label index ``positive`` (``fastall.data.positive`` decides it; label 1 by
default, the C-NMC order, for callers with their own arrays). With ``positive=None`` (two classes, no disease
class named) or more classes: macro averages, one-vs-rest AUC, and no specificity or NPV.
Clinical metrics (with ``detail``): balanced accuracy, specificity (recall of the other class), NPV (precision
of the other class), MCC, weighted F1 (the C-NMC 2019 challenge's ranking metric), Brier score and the
precision-recall AUC (average precision). NaN policy: a metric that is undefined on a split is NaN in
Python and ``null`` in JSON: AUC and PR AUC with one class only, specificity without negatives, NPV
without predicted negatives, specificity and NPV with more than two classes or no positive class,
precision without predicted positives, recall without positives, F1 without either (macro averages leave
such classes out); MCC is 0 there, as in sklearn.

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
    y_true: np.ndarray,
    prob: np.ndarray,
    classes: int | None = None,
    detail: bool = True,
    positive: int | None = 1,
) -> dict:
    """accuracy, precision, recall, F1 and ROC AUC of ``prob [N, K]``; with ``detail`` also the clinical
    metrics (``CLINICAL``), the log loss, the confusion matrix (rows: true class index) and ``per_class``
    (precision, recall, F1, support and one-vs-rest AUC of every class). Recall is the sensitivity of class
    ``positive`` when there are two classes and ``positive`` is not None, else the macro average."""
    y_true = np.asarray(y_true, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    prob = prob / np.clip(prob.sum(1, keepdims=True), 1e-12, None)
    k = classes or prob.shape[1]
    labels = list(range(k))
    pos = positive if k == 2 else None
    y_pred = prob.argmax(1)
    avg = (
        {"average": "binary", "pos_label": pos} if pos is not None else {"average": "macro", "labels": labels}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, zero_division=np.nan, **avg
        )
    out = {
        "n": int(y_true.size),
        "accuracy": float(accuracy_score(y_true, y_pred)) if y_true.size else math.nan,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auc": _auc(y_true, prob, labels, pos),
    }
    if detail:
        out.update(clinical_metrics(y_true, y_pred, prob, labels, pos))
        out["log_loss"] = float(log_loss(y_true, prob, labels=labels)) if y_true.size else math.nan
        out["confusion"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
        out["per_class"] = per_class_metrics(y_true, y_pred, prob, labels)
        if k > 2:
            out["auc_weighted"] = _auc(y_true, prob, labels, None, average="weighted")
    return out


def per_class_metrics(y_true: np.ndarray, y_pred: np.ndarray, prob: np.ndarray, labels: list[int]) -> list:
    """Per class index: precision, recall, F1, support and the one-vs-rest ROC AUC (undefined: NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, r, f, s = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=None, zero_division=np.nan
        )
    out = []
    for c in labels:
        ovr = y_true == c
        auc = float(roc_auc_score(ovr, prob[:, c])) if 0 < ovr.sum() < ovr.size else math.nan
        out.append(
            {
                "precision": float(p[c]),
                "recall": float(r[c]),
                "f1": float(f[c]),
                "support": int(s[c]),
                "auc": auc,
            }
        )
    return out


def clinical_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, prob: np.ndarray, labels: list[int], positive: int | None = 1
) -> dict:
    """The ``CLINICAL`` metrics of predictions ``y_pred`` and normalised probabilities ``prob [N, K]``;
    specificity and NPV only with two classes and a ``positive`` class index."""
    if not y_true.size:
        return dict.fromkeys(CLINICAL, math.nan)
    pos = positive if len(labels) == 2 else None
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
            "brier": _brier(y_true, prob, labels, pos),
            "pr_auc": _pr_auc(y_true, prob, labels, pos),
        }
        if pos is not None:
            negative = {"pos_label": 1 - pos, "average": "binary", "zero_division": np.nan}
            out["specificity"] = float(recall_score(y_true, y_pred, **negative))
            out["npv"] = float(precision_score(y_true, y_pred, **negative))
    return out


def _brier(y_true: np.ndarray, prob: np.ndarray, labels: list[int], pos: int | None) -> float:
    if len(labels) == 2:
        c = 1 if pos is None else pos  # the binary Brier score is the same for either class
        return float(brier_score_loss(y_true == c, prob[:, c]))
    try:
        return float(brier_score_loss(y_true, prob, labels=labels))
    except (TypeError, ValueError):
        return math.nan


def _pr_auc(y_true: np.ndarray, prob: np.ndarray, labels: list[int], pos: int | None) -> float:
    if np.unique(y_true).size < 2:
        return math.nan
    if pos is not None:
        return float(average_precision_score(y_true == pos, prob[:, pos]))
    onehot = label_binarize(y_true, classes=labels)
    if len(labels) == 2:
        onehot = np.column_stack([1 - onehot[:, 0], onehot[:, 0]])
    present = onehot.sum(0) > 0
    scores = [average_precision_score(onehot[:, c], prob[:, c]) for c in np.flatnonzero(present)]
    return float(np.mean(scores))


def _auc(
    y_true: np.ndarray, prob: np.ndarray, labels: list[int], pos: int | None, average: str = "macro"
) -> float:
    """ROC AUC: of class ``pos`` for two classes (the same number for either class), else one-vs-rest."""
    if np.unique(y_true).size < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if len(labels) == 2:
                c = 1 if pos is None else pos
                return float(roc_auc_score(y_true == c, prob[:, c]))
            return float(roc_auc_score(y_true, prob, multi_class="ovr", average=average, labels=labels))
        except ValueError:
            return math.nan


def summarize(
    per_fold: Sequence[dict], names: Sequence[str] = (*METRICS, *CLINICAL, "log_loss", "auc_weighted")
) -> dict:
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
