"""Patient-level diagnosis: cells aggregated to patients, and metrics over patients with exact CIs.

A patient's score is the mean probability of the positive class (``fastall.data.positive``: ALL for C-NMC)
over its cells; a second rule uses the fraction of its cells called positive. A patient is called positive
when the score is at least the threshold
(the cell threshold for the mean probability, one half for the fraction). Accuracy, sensitivity and
specificity are proportions of patients, each with an exact binomial (Clopper-Pearson) 95% interval; the AUC
over patients has no binomial interval. Two classes only.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from fastall.system import csvsafe

LEVEL = 0.95
RULES = ("mean_probability", "fraction_called")
SAME_AS_CELLS = "every image is its own patient: patient-level figures equal the cell-level ones"


def aggregate(
    patients: np.ndarray, truth: np.ndarray, score: np.ndarray, threshold: float = 0.5
) -> list[dict]:
    """One row per patient: cells, true label (majority of its cells), mean score, fraction called
    positive."""
    patients = np.asarray(patients).astype(str)
    truth, score = np.asarray(truth, dtype=np.int64), np.asarray(score, dtype=np.float64)
    rows = []
    for p in np.unique(patients):
        mask = patients == p
        rows.append(
            {
                "patient": str(p),
                "cells": int(mask.sum()),
                "label": int(truth[mask].mean() >= 0.5),
                "mixed_labels": bool(np.unique(truth[mask]).size > 1),
                "mean_probability": float(score[mask].mean()),
                "fraction_called": float((score[mask] >= threshold).mean()),
            }
        )
    return rows


def proportion(k: int, n: int, level: float = LEVEL) -> dict:
    """``k / n`` with its exact binomial (Clopper-Pearson) interval; NaN and no interval when ``n`` is 0."""
    if n == 0:
        return {"value": math.nan, "k": 0, "n": 0, "ci": None}
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return {"value": k / n, "k": int(k), "n": int(n), "ci": [float(ci.low), float(ci.high)]}


def rule_metrics(truth: np.ndarray, score: np.ndarray, cut: float) -> dict:
    """Accuracy, sensitivity, specificity (exact CIs) and AUC; positive at ``score >= cut``."""
    called = score >= cut
    pos, neg = truth == 1, truth == 0
    auc = float(roc_auc_score(truth, score)) if pos.any() and neg.any() else math.nan
    return {
        "threshold": float(cut),
        "accuracy": proportion(int((called == pos).sum()), truth.size),
        "sensitivity": proportion(int((called & pos).sum()), int(pos.sum())),
        "specificity": proportion(int((~called & neg).sum()), int(neg.sum())),
        "auc": auc,
    }


def patient_level(
    truth: np.ndarray, score: np.ndarray, patients: np.ndarray, threshold: float = 0.5
) -> tuple[dict, list[dict]]:
    """Patient-level metrics under both rules, and the per-patient rows (for patients.csv)."""
    rows = aggregate(patients, truth, score, threshold)
    y = np.array([r["label"] for r in rows], dtype=np.int64)
    out: dict = {
        "patients": len(rows),
        "images": int(np.asarray(truth).size),
        "positive_patients": int(y.sum()),
        "negative_patients": int((y == 0).sum()),
        "ci": "exact binomial (Clopper-Pearson), 95%",
        "notes": [],
    }
    for rule, cut in zip(RULES, (threshold, 0.5), strict=True):
        out[rule] = rule_metrics(y, np.array([r[rule] for r in rows]), cut)
    if len(rows) == out["images"]:
        out["notes"].append(SAME_AS_CELLS)
    if not (y.any() and (y == 0).any()):
        out["notes"].append("one class of patients only: AUC is undefined")
    mixed = sum(r["mixed_labels"] for r in rows)
    if mixed:
        out["notes"].append(f"{mixed} patient(s) have cells of both classes: labelled by their majority")
    return out, rows


def run_patient_level(
    predictions_csv: str | Path, class_names: list[str], positive: str | None
) -> dict | None:
    """Patient-level metrics of a train-head run's predictions.csv: out of fold (``val``) and ``test``; None
    without a positive class (more than two classes, or none named)."""
    if len(class_names) != 2 or positive is None:
        return None
    with open(predictions_csv, newline="") as fh:
        rows = list(csvsafe.dict_reader(fh))
    out = {}
    for split, name in (("val", "out_of_fold"), ("test", "test")):
        chosen = [r for r in rows if r["split"] == split]
        if chosen:
            truth = np.array([r["true_class"] == positive for r in chosen], dtype=np.int64)
            score = np.array([float(r[f"p_{positive}"]) for r in chosen])
            out[name] = patient_level(truth, score, np.array([r["patient"] for r in chosen]))[0]
            out[name]["positive_class"] = positive
    return out
