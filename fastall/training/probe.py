"""The baseline every accuracy claim is set beside: a standardised logistic probe on view 0 of the same cache,
fitted on each fold's training patients and scored on its validation patients (the same folds as the head)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fastall.training.splits import Splits


def probe_oof_scores(features: np.ndarray, labels: np.ndarray, splits: Splits) -> np.ndarray:
    """Out-of-fold P(class 1) of each pool row (NaN elsewhere) from a standardised logistic regression on
    ``features [N, D]`` (view 0)."""
    scores = np.full(len(labels), np.nan)
    for train, val in splits.folds:
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe.fit(features[train].astype(np.float32), labels[train])
        scores[val] = probe.predict_proba(features[val].astype(np.float32))[:, 1]
    return scores


def probe_auc(features: np.ndarray, labels: np.ndarray, splits: Splits) -> dict[str, float]:
    """The probe's pooled out-of-fold AUC and its mean AUC over folds (binary labels)."""
    scores = probe_oof_scores(features, labels, splits)
    per_fold = [
        roc_auc_score(labels[val], scores[val]) for _, val in splits.folds if len(set(labels[val])) == 2
    ]
    pool = splits.pool
    return {"oof_auc": float(roc_auc_score(labels[pool], scores[pool])), "auc": float(np.mean(per_fold))}
