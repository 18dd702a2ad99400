"""Figures of merit of one protocol: per fold, over folds, pooled out of fold and on the test set, each pooled
figure with its 95% patient-bootstrap interval (log loss included), and the rows of probe.csv."""

from __future__ import annotations

import math

import numpy as np

from fastall.training.bootstrap import patient_codes, patient_counts
from fastall.training.metrics import classification_metrics, summarize
from fastall.training.uncertainty import metrics_with_ci

CSV_METRICS = ("accuracy", "balanced_accuracy", "f1_weighted", "auc", "log_loss")


def log_loss_ci(
    y: np.ndarray, prob: np.ndarray, patients: np.ndarray, *, seed: int = 0, resamples: int = 1000
) -> list[float] | None:
    """Percentile interval of the log loss over patient resamples (the same draws as the other intervals)."""
    codes = patient_codes(patients)
    n_pat = int(codes.max()) + 1 if codes.size else 0
    if n_pat < 2:
        return None
    nll = -np.log(np.clip(prob[np.arange(y.size), y], 1e-15, None))
    counts = patient_counts(n_pat, resamples, seed)
    values = (counts @ np.bincount(codes, weights=nll, minlength=n_pat)) / (
        counts @ np.bincount(codes, minlength=n_pat)
    )
    return [float(v) for v in np.percentile(values, [2.5, 97.5])]


def protocol_scores(
    labels: np.ndarray,
    patients: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    oof: np.ndarray,
    classes: int,
    *,
    test: np.ndarray | None = None,
    test_prob: np.ndarray | None = None,
    seed: int = 0,
    positive: int | None = None,
) -> dict:
    """``folds`` (metrics per fold), ``summary`` (mean and std over folds), ``pooled`` (out of fold, with
    ``ci``) and ``test`` (with ``ci``, or None) of probabilities ``oof [N, K]`` (NaN off the folds);
    one-sided metrics of the class index ``positive`` (None: macro, none of them)."""
    rows = [
        {"fold": i, **classification_metrics(labels[val], oof[val], classes, positive=positive)}
        for i, (_, val) in enumerate(folds)
    ]
    done = np.concatenate([val for _, val in folds])
    pooled = metrics_with_ci(labels[done], oof[done], patients[done], classes, seed=seed, positive=positive)
    pooled["ci"]["log_loss"] = log_loss_ci(labels[done], oof[done], patients[done], seed=seed)
    out = {"folds": rows, "summary": summarize(rows), "pooled": pooled, "test": None}
    if test is not None and test.size and test_prob is not None:
        out["test"] = metrics_with_ci(
            labels[test], test_prob, patients[test], classes, seed=seed, positive=positive
        )
        out["test"]["ci"]["log_loss"] = log_loss_ci(labels[test], test_prob, patients[test], seed=seed)
    return out


def _interval(pooled: dict, name: str) -> list[float] | None:
    ci = pooled.get("ci") or {}
    if name == "log_loss":
        return ci.get("log_loss")
    return (ci.get("intervals") or {}).get(name)


def csv_row(name: str, scores: dict, reach: int | str | None = None) -> dict:
    """One row of probe.csv: the mean CV accuracy, the pooled figures with their intervals, the test
    accuracy and where the label-efficiency curve reaches 95% of its full-data accuracy."""
    row: dict = {
        "protocol": name,
        "cv_accuracy": scores["summary"].get("accuracy"),
        "cv_accuracy_std": scores["summary"].get("accuracy_std"),
    }
    pooled = scores.get("pooled") or {}
    for metric in CSV_METRICS:
        ci = _interval(pooled, metric)
        row[metric] = pooled.get(metric)
        row[f"{metric}_low"], row[f"{metric}_high"] = ci if ci else (math.nan, math.nan)
    row["test_accuracy"] = (scores.get("test") or {}).get("accuracy", math.nan)
    row["reach_95_patients"] = reach if reach is not None else ""
    return row
