"""Screening figures: per smear and per patient, leukocytes found, the fraction called the positive class
(Wilson 95 % interval), the mean probability, and a flag at a cut chosen on the run's own out-of-fold
patient-level results.

The cut: for every out-of-fold patient of the run (RUN/predictions.csv, ``split=val``), the fraction of its
cells the fold head called positive; the cut maximises Youden's J (sensitivity + specificity - 1) over those
patients. It is chosen before and without the screened data, which never moves it.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import roc_curve

from fastall.system.csvsafe import MissingColumns, read_table

LEVEL = 0.95
CUT_RULE = (
    "Youden's J over the run's out-of-fold patients' fraction of cells called positive "
    "(chosen on the run's own cross-validation, never on the screened data)"
)


def wilson(k: int, n: int) -> tuple[float, float] | None:
    if n == 0:
        return None
    ci = binomtest(k, n).proportion_ci(confidence_level=LEVEL, method="wilson")
    return float(ci.low), float(ci.high)


def patient_cut(run: str | Path, positive: str | None) -> dict:
    """``{"cut", "rule", "patients", "sensitivity", "specificity"}``; ``cut`` None (with ``why``) when the
    run has no positive class, no out-of-fold predictions or one class of patients only."""
    if positive is None:
        return {"cut": None, "why": "the run has no positive class: no fraction to flag"}
    path = Path(run) / "predictions.csv"
    try:
        table = read_table(path, ("split", "patient", "true_class", "predicted_class"))
    except (OSError, UnicodeDecodeError, csv.Error, MissingColumns) as err:
        why = getattr(err, "strerror", None) or str(err).splitlines()[0]
        return {"cut": None, "why": f"{path}: cannot read the run's out-of-fold predictions ({why})"}
    rows = [r for r in table if r["split"] == "val"]
    called: dict[str, list[bool]] = defaultdict(list)
    truth: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        called[r.get("patient", "")].append(r.get("predicted_class") == positive)
        truth[r.get("patient", "")].append(r.get("true_class") == positive)
    patients = sorted(called)
    y = np.array([np.mean(truth[p]) >= 0.5 for p in patients], dtype=int)
    score = np.array([np.mean(called[p]) for p in patients])
    if not patients or y.min() == y.max():
        return {"cut": None, "why": "the run's out-of-fold results hold one class of patients (or none)"}
    fpr, tpr, thresholds = roc_curve(y, score)
    best = int(np.argmax(tpr - fpr))
    cut = float(min(1.0, thresholds[best]))
    flagged = score >= cut
    return {
        "cut": cut,
        "rule": CUT_RULE,
        "patients": len(patients),
        "sensitivity": float(flagged[y == 1].mean()),
        "specificity": float((~flagged[y == 0]).mean()),
    }


def summarise(cells: list[dict], cut: float | None) -> dict:
    """One group's figures from its cells' ``called`` (bool or None) and ``p`` (P(positive) or None)."""
    n = len(cells)
    scored = [c for c in cells if c["called"] is not None]
    k = sum(bool(c["called"]) for c in scored)
    out = {"leukocytes": n, "positive": k if scored else None}
    out["fraction_positive"] = k / len(scored) if scored else math.nan
    ci = wilson(k, len(scored)) if scored else None
    out["ci_low"], out["ci_high"] = ci if ci else (math.nan, math.nan)
    out["mean_probability"] = float(np.mean([c["p"] for c in scored])) if scored else math.nan
    out["flag"] = bool(cut is not None and scored and out["fraction_positive"] >= cut)
    return out


def fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"
