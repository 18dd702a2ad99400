"""The decision threshold, chosen on the run's own out-of-fold predictions, never on the data tested.

``0.5`` (or any number) is taken as given. ``youden`` maximises TPR - FPR on the out-of-fold ROC curve;
``sens=S`` is the highest threshold whose out-of-fold sensitivity is at least S. Both read the ``val`` rows of
RUN/predictions.csv (P(ALL) in ``probability``), so the external labels cannot move them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from fastall.errors import FastallError
from fastall.system import csvsafe
from fastall.system.files import open_regular_text


def oof_predictions(run: str | Path, positive: str) -> tuple[np.ndarray, np.ndarray]:
    """``(truth, P(positive))`` of the out-of-fold rows of RUN/predictions.csv."""
    path = Path(run) / "predictions.csv"
    try:
        with open_regular_text(path) as fh:
            rows = [r for r in csvsafe.dict_reader(fh) if r.get("split") == "val"]
        truth = np.array([r["label"] == positive for r in rows], dtype=np.int64)
        score = np.array([float(r["probability"]) for r in rows], dtype=np.float64)
    except OSError as err:
        raise FastallError(
            f"{path}: cannot read the run's out-of-fold predictions ({err.strerror})"
        ) from None
    except (KeyError, ValueError, TypeError, csv.Error) as err:
        raise FastallError(f"{path}: not a train-head predictions file ({err})") from None
    if not rows:
        raise FastallError(f"{path}: no out-of-fold (split=val) predictions to choose a threshold on")
    bad = np.flatnonzero(~((score >= 0) & (score <= 1)))
    if bad.size:
        raise FastallError(
            f"{path}: {bad.size} out-of-fold probabilities are not in [0, 1] (NaN, inf or out of range; row "
            f"{rows[bad[0]].get('path')}: {score[bad[0]]}): the file was altered; retrain the run"
        )
    return truth, score


def choose_threshold(spec: str, run: str | Path, class_names: list[str]) -> dict:
    """``{"value", "source", "rule"}`` for ``spec``: a number, ``youden`` or ``sens=S``."""
    spec = str(spec).strip().lower()
    try:
        value = float(spec)
    except ValueError:
        value = None
    if value is not None:
        if not 0.0 < value < 1.0:
            raise FastallError(f"--threshold {spec}: a probability threshold must be between 0 and 1")
        return {"value": value, "source": "given", "rule": spec}
    if len(class_names) != 2:
        raise FastallError(f"--threshold {spec} needs a two-class run; this run has {len(class_names)}")
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
    truth, score = oof_predictions(run, class_names[1])
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
        "oof_sensitivity": float(tpr[best]),
        "oof_specificity": float(1.0 - fpr[best]),
    }
