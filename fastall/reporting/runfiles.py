"""Reading a run or sweep folder for the report: metrics.json, predictions.csv, folds.csv, results.json.

Each file is optional here: what is missing becomes a one-line note, and the report makes what it can.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastall.errors import FastallError
from fastall.system import csvsafe
from fastall.system.files import open_regular_text


@dataclass
class Predictions:
    """predictions.csv as arrays: out-of-fold validation rows (split ``val``) and test rows (``test``)."""

    path: np.ndarray
    patient: np.ndarray
    label: np.ndarray
    split: np.ndarray
    fold: np.ndarray
    prediction: np.ndarray
    probability: np.ndarray
    probability_ensemble: np.ndarray
    class_names: list[str]

    @property
    def binary(self) -> bool:
        return len(self.class_names) == 2

    @property
    def positive(self) -> str:
        return self.class_names[-1]

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def truth(self, rows: np.ndarray) -> np.ndarray:
        """1 where the true class is the positive one (binary runs)."""
        return (self.label[rows] == self.positive).astype(np.int64)

    def folds(self) -> list[int]:
        return sorted({int(f) for f in self.fold[self.rows("val")]})


@dataclass
class RunFiles:
    """What a run folder holds; ``notes`` name what was missing or unreadable."""

    folder: Path
    metrics: dict | None = None
    predictions: Predictions | None = None
    folds: list[dict] | None = None
    sweep: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def history(self) -> dict | None:
        return (self.metrics or {}).get("history")


def load_run(folder: str | Path) -> RunFiles:
    """Read a run (metrics.json, predictions.csv, folds.csv) or a sweep (results.json) folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FastallError(f"{folder}: no such run folder")
    run = RunFiles(folder)
    if (folder / "results.json").is_file():
        run.sweep = _json(folder / "results.json", "fastall-sweep")
        return run
    names = ("metrics.json", "predictions.csv")
    if not any((folder / n).is_file() for n in names):
        raise FastallError(
            f"{folder}: not a fastall run folder (no metrics.json, predictions.csv or results.json)"
        )
    if (folder / "metrics.json").is_file():
        run.metrics = _json(folder / "metrics.json", "fastall-run")
        if "history" not in run.metrics:
            run.notes.append(
                f"{folder / 'metrics.json'} has no per-epoch history (a run made before fastall "
                "recorded it): training curves left out"
            )
    else:
        run.notes.append(
            f"{folder / 'metrics.json'} is missing: tables, provenance and training curves left out; "
            "figures made from predictions.csv"
        )
    classes = ((run.metrics or {}).get("cache") or {}).get("class_names")
    if (folder / "predictions.csv").is_file():
        run.predictions = _predictions(folder / "predictions.csv", classes)
    else:
        run.notes.append(f"{folder / 'predictions.csv'} is missing: curves, matrices and cell grids left out")
    if (folder / "folds.csv").is_file():
        run.folds = _csv(folder / "folds.csv")
    return run


def _json(path: Path, fmt: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FastallError(f"{path}: unreadable ({err})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise FastallError(f"{path}: not a {fmt} file")
    return data


def _csv(path: Path) -> list[dict]:
    try:
        with open_regular_text(path) as fh:
            return list(csvsafe.dict_reader(fh))
    except OSError as err:
        raise FastallError(f"{path}: unreadable ({err.strerror or err})") from None
    except (csv.Error, UnicodeDecodeError) as err:
        raise FastallError(f"{path}: not a CSV file ({str(err)[:80]})") from None


def _predictions(path: Path, classes: list[str] | None) -> Predictions:
    rows = _csv(path)
    need = ("path", "patient", "label", "split", "fold", "prediction", "probability")
    missing = [c for c in need if rows and c not in rows[0]]
    if missing:
        raise FastallError(f"{path}: not a fastall predictions file (no column {missing[0]!r})")

    def col(name: str) -> np.ndarray:
        return np.array([r.get(name, "") for r in rows], dtype=object)

    try:
        prob = np.array([float(r["probability"]) for r in rows], dtype=np.float64)
        ens = np.array([float(r.get("probability_ensemble") or "nan") for r in rows], dtype=np.float64)
        fold = np.array([int(r["fold"]) if r["fold"].strip() else -1 for r in rows], dtype=np.int64)
    except (ValueError, TypeError, AttributeError) as err:
        raise FastallError(f"{path}: a probability or fold is not a number ({err})") from None
    if not rows:
        raise FastallError(f"{path}: no prediction rows (empty or header only)")
    bad = np.flatnonzero(~((prob >= 0) & (prob <= 1)))
    if bad.size:
        raise FastallError(
            f"{path}: {bad.size} probabilities are not in [0, 1] (first: {rows[bad[0]].get('path')}: "
            f"{prob[bad[0]]}); the file was altered"
        )
    label, pred = col("label"), col("prediction")
    unknown = sorted((set(label) | set(pred)) - set(classes)) if classes else []
    if unknown:
        raise FastallError(f"{path}: label {unknown[0]!r} is not one of the run's classes {list(classes)}")
    return Predictions(
        path=col("path"),
        patient=col("patient"),
        label=label,
        split=col("split"),
        fold=fold,
        prediction=pred,
        probability=prob,
        probability_ensemble=ens,
        class_names=list(classes) if classes else _class_order(label, pred, prob),
    )


def _class_order(label: np.ndarray, pred: np.ndarray, prob: np.ndarray) -> list[str]:
    """Without metrics.json: the classes sorted, the positive class (whose probability the file holds) last:
    the class predicted where that probability is above one half."""
    names = sorted(set(label) | set(pred))
    above = pred[prob > 0.5]
    if len(names) == 2 and above.size:
        values, counts = np.unique(above.astype(str), return_counts=True)
        positive = str(values[np.argmax(counts)])
        names = [n for n in names if n != positive] + [positive]
    return names
