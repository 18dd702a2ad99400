"""The decision threshold, chosen on the run's own out-of-fold predictions, never on the data tested.

``0.5`` (or any number) is taken as given. ``youden`` maximises TPR - FPR on the out-of-fold ROC curve;
``sens=S`` is the highest threshold whose out-of-fold sensitivity (of the run's positive class) is at least S.
Both read the ``val`` rows of RUN/predictions.csv (P(positive class)), so the external labels cannot move
them. A cut on P(positive) needs a positive class: a two-class run without one is refused with one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from fastall.errors import FastallError
from fastall.reporting.saved_runs import read_predictions


def oof_predictions(run: str | Path, class_names: list[str], positive: str) -> tuple[np.ndarray, np.ndarray]:
    """``(truth, P(positive))`` of the out-of-fold rows of RUN/predictions.csv (either vocabulary)."""
    path = Path(run) / "predictions.csv"
    if not os.path.lexists(path):
        raise FastallError(f"{path}: cannot read the run's out-of-fold predictions (no such file)")
    try:
        p = read_predictions(path, class_names, positive)
    except FastallError as err:
        raise FastallError(f"not a train-head predictions file: {err}") from err
    rows = p.rows("val")
    if not rows.size:
        raise FastallError(f"{path}: no out-of-fold (split=val) predictions to choose a threshold on")
    return p.truth(rows), p.probability[rows]


def choose_threshold(spec: str, run: str | Path, class_names: list[str], positive: str | None = None) -> dict:
    """``{"value", "source", "rule"}`` for ``spec``: a number, ``youden`` or ``sens=S``, a cut on
    P(``positive``)."""
    spec = str(spec).strip().lower()
    try:
        value = float(spec)
    except ValueError:
        value = None
    if value is not None:
        if not 0.0 < value < 1.0:
            raise FastallError(f"--threshold {spec}: a probability threshold must be between 0 and 1")
        if positive is None and len(class_names) == 2 and value != 0.5:
            raise FastallError(
                f"--threshold {spec} is a cut on P(positive class), and this run has none: name the disease "
                f"class with --positive ({' or '.join(class_names)})"
            )
        return {"value": value, "source": "given", "rule": spec}
    if len(class_names) != 2:
        raise FastallError(f"--threshold {spec} needs a two-class run; this run has {len(class_names)}")
    if positive is None:
        raise FastallError(
            f"--threshold {spec} needs a positive class, and this run has none: name the disease class with "
            f"--positive ({' or '.join(class_names)})"
        )
    if spec == "youden":
        target = None
    elif spec.startswith("sens="):
        try:
            target = float(spec[5:])
        except ValueError:
            target = -1.0
        if not 0.0 < target <= 1.0:
            raise FastallError(f"--threshold {spec}: the sensitivity must be in (0, 1], e.g. sens=0.95")
    else:
        raise FastallError(f"--threshold {spec!r}: use a number (0.5), youden or sens=0.95")
    truth, score = oof_predictions(run, class_names, positive)
    if truth.min() == truth.max():
        raise FastallError(f"{run}: the out-of-fold predictions hold one class only: cannot choose {spec}")
    fpr, tpr, cuts = roc_curve(truth, score)
    finite = np.isfinite(cuts)
    if target is None:
        best = int(np.argmax(np.where(finite, tpr - fpr, -np.inf)))
    else:
        ok = np.flatnonzero(finite & (tpr >= target))
        best = int(ok[np.argmax(cuts[ok])]) if ok.size else int(np.flatnonzero(finite)[-1])
    return {
        "value": float(cuts[best]),
        "source": f"the run's out-of-fold predictions ({truth.size} images, {Path(run) / 'predictions.csv'})",
        "rule": spec,
        "positive_class": positive,
        "oof_sensitivity": float(tpr[best]),
        "oof_specificity": float(1.0 - fpr[best]),
    }
