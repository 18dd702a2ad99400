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
class SavedPredictions:
    """predictions.csv as arrays: out-of-fold validation rows (split ``val``) and test rows (``test``).

    ``label`` is the true class and ``prediction`` the predicted one (columns ``true_class`` and
    ``predicted_class``; ``label`` and ``prediction`` in runs before fastall 0.2). ``probs [N, K]``: every
    class's probability (``p_<class>``; older runs stored P(class 1) alone, from which both columns of a
    binary run follow). ``positive`` is the run's positive class (None: none was named, or K > 2).
    ``probability`` is P(``score_class``) for two classes, else P(predicted class)."""

    path: np.ndarray
    patient: np.ndarray
    label: np.ndarray
    split: np.ndarray
    fold: np.ndarray
    prediction: np.ndarray
    probability: np.ndarray
    probability_ensemble: np.ndarray
    class_names: list[str]
    probs: np.ndarray | None = None
    positive: str | None = None

    @property
    def binary(self) -> bool:
        return len(self.class_names) == 2

    @property
    def score_class(self) -> str:
        """The class whose probability the binary curves plot: the positive class, else the second class."""
        return self.positive if self.positive is not None else self.class_names[-1]

    @property
    def negative(self) -> str:
        """The other class of a binary run."""
        return next(c for c in self.class_names if c != self.score_class)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def truth(self, rows: np.ndarray) -> np.ndarray:
        """1 where the true class is ``score_class`` (binary runs)."""
        return (self.label[rows] == self.score_class).astype(np.int64)

    def folds(self) -> list[int]:
        return sorted({int(f) for f in self.fold[self.rows("val")]})


@dataclass
class RunFiles:
    """What a run folder holds; ``notes`` name what was missing or unreadable."""

    folder: Path
    metrics: dict | None = None
    predictions: SavedPredictions | None = None
    folds: list[dict] | None = None
    sweep: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def history(self) -> dict | None:
        return (self.metrics or {}).get("history")


def read_run_files(folder: str | Path) -> RunFiles:
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
        run.predictions = read_predictions(folder / "predictions.csv", classes, positive_name(run.metrics))
    else:
        run.notes.append(f"{folder / 'predictions.csv'} is missing: curves, matrices and cell grids left out")
    if (folder / "folds.csv").is_file():
        run.folds = _csv(folder / "folds.csv")
    return run


def _json(path: Path, fmt: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FastallError(f"{path}: unreadable ({err})") from err
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise FastallError(f"{path}: not a {fmt} file")
    return data


def _csv(path: Path) -> list[dict]:
    try:
        with open_regular_text(path) as fh:
            return list(csvsafe.dict_reader(fh))
    except OSError as err:
        raise FastallError(f"{path}: unreadable ({err.strerror or err})") from err
    except (csv.Error, UnicodeDecodeError) as err:
        raise FastallError(f"{path}: not a CSV file ({str(err)[:80]})") from err


def positive_name(metrics: dict | None) -> str | None:
    """The run's positive class: recorded in metrics.json (``classes.positive.name``); a binary run made
    before fastall recorded it scored its second class (C-NMC: ``all``)."""
    if not metrics:
        return None
    recorded = metrics.get("classes")
    if recorded is not None:
        return (recorded.get("positive") or {}).get("name")
    names = (metrics.get("cache") or {}).get("class_names") or []
    return names[1] if len(names) == 2 else None


def read_predictions(path: Path, classes: list[str] | None, positive: str | None = None) -> SavedPredictions:
    """predictions.csv, in either vocabulary (``SavedPredictions``)."""
    rows = _csv(path)
    new = bool(rows) and "true_class" in rows[0]
    truth_col, pred_col = ("true_class", "predicted_class") if new else ("label", "prediction")
    need = ("path", "patient", truth_col, "split", "fold", pred_col)
    missing = [c for c in need if rows and c not in rows[0]]
    if not new and rows and "probability" not in rows[0]:
        missing.append("probability")
    if missing:
        raise FastallError(f"{path}: not a fastall predictions file (no column {missing[0]!r})")

    def col(name: str) -> np.ndarray:
        return np.array([r.get(name, "") for r in rows], dtype=object)

    def num(row: dict, name: str) -> float:
        return float(row.get(name) or "nan")

    label, pred = col(truth_col), col(pred_col)
    try:
        fold = np.array([int(r["fold"]) if r["fold"].strip() else -1 for r in rows], dtype=np.int64)
        if new:
            names = list(classes) if classes else [c[2:] for c in rows[0] if c.startswith("p_")]
            probs = np.array([[num(r, f"p_{c}") for c in names] for r in rows], dtype=np.float64)
            ens = np.array([[num(r, f"ensemble_p_{c}") for c in names] for r in rows], dtype=np.float64)
        else:
            first = np.array([num(r, "probability") for r in rows], dtype=np.float64)
            second = np.array([num(r, "probability_ensemble") for r in rows], dtype=np.float64)
            names = list(classes) if classes else _class_order(label, pred, first)
            probs, ens = _legacy_probs(first, pred, names), _legacy_probs(second, pred, names)
    except (ValueError, TypeError, AttributeError) as err:
        raise FastallError(f"{path}: a probability or fold is not a number ({err})") from err
    if not rows:
        raise FastallError(f"{path}: no prediction rows (empty or header only)")
    probs, ens = probs.reshape(len(rows), len(names)), ens.reshape(len(rows), len(names))
    main = probs if new else first[:, None]
    bad = np.flatnonzero(~((main >= 0) & (main <= 1)).all(1))
    if bad.size:
        raise FastallError(
            f"{path}: {bad.size} rows have probabilities that are not in [0, 1] (NaN, inf or out of range; "
            f"first: {rows[bad[0]].get('path')}); the file was altered"
        )
    unknown = sorted((set(label) | set(pred)) - set(names))
    if unknown:
        raise FastallError(f"{path}: class {unknown[0]!r} is not one of the run's classes {names}")
    if positive is None and not classes and len(names) == 2 and not new:
        positive = names[1]
    p = SavedPredictions(
        path=col("path"),
        patient=col("patient"),
        label=label,
        split=col("split"),
        fold=fold,
        prediction=pred,
        probability=np.zeros(len(rows)),
        probability_ensemble=np.zeros(len(rows)),
        class_names=names,
        probs=probs,
        positive=positive if positive in names else None,
    )
    p.probability, p.probability_ensemble = _score(p, probs), _score(p, ens)
    return p


def _score(p: SavedPredictions, probs: np.ndarray) -> np.ndarray:
    if p.binary:
        return probs[:, p.class_names.index(p.score_class)]
    return probs.max(1) if probs.size else np.zeros(probs.shape[0])


def _legacy_probs(score: np.ndarray, pred: np.ndarray, names: list[str]) -> np.ndarray:
    """[N, K] from an older file's one probability: P(class 1) of a binary run, else P(predicted) alone."""
    if len(names) == 2:
        return np.column_stack([1 - score, score])
    out = np.full((score.size, len(names)), np.nan)
    for i, name in enumerate(pred):
        if name in names:
            out[i, names.index(name)] = score[i]
    return out


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
