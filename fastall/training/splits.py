"""Patient-level splits: a holdout (or prelim) test set, then StratifiedGroupKFold on the rest, audited.

Every split is made of whole patients. :func:`audit_splits` proves it (and raises otherwise); it runs on
every split this module returns, so a leak can never reach training.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from fastall.errors import FastallError

TEST_MODES = ("holdout", "prelim", "none")


class LeakageError(FastallError):
    """A patient appears in two of train, validation and test."""


@dataclass
class Splits:
    """Row indices into the cache. ``folds[i] = (train, val)``; ``pool`` = every labelled non-test row."""

    test: np.ndarray
    pool: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    test_mode: str
    seed: int

    def fold_of_row(self, n: int) -> np.ndarray:
        """Per row: the fold it validates in, -1 for test rows, -2 for rows used nowhere (unlabelled)."""
        out = np.full(n, -2, dtype=np.int64)
        out[self.test] = -1
        for i, (_, val) in enumerate(self.folds):
            out[val] = i
        return out


def make_splits(
    labels: np.ndarray,
    patients: np.ndarray,
    sources: np.ndarray,
    *,
    folds: int = 5,
    test: str = "holdout",
    holdout: float = 0.1,
    seed: int = 0,
    class_names: list[str] | None = None,
) -> Splits:
    """Take the test set, then ``folds`` stratified patient-grouped folds of the pool (audited)."""
    labels = np.asarray(labels)
    patients = np.asarray(patients, dtype=object)
    names = class_names or [str(k) for k in range(int(labels.max()) + 1 if labels.size else 0)]
    if test not in TEST_MODES:
        raise FastallError(f"--test {test!r}: expected one of {', '.join(TEST_MODES)}")
    if folds < 2:
        raise FastallError(f"--folds {folds}: cross-validation needs at least 2 folds")
    labelled = np.flatnonzero(labels >= 0)
    if labelled.size == 0:
        raise FastallError("the cache has no labelled images: nothing to train on")
    present = np.unique(labels[labelled])
    if present.size < 2:
        raise FastallError(
            f"the labelled images are all of class {names[int(present[0])]!r}: "
            "training needs at least 2 classes"
        )
    if test == "prelim":
        is_prelim = np.asarray(sources, dtype=object)[labelled] == "prelim"
        if not is_prelim.any():
            raise FastallError(
                "--test prelim: the cache has no labelled prelim-phase images "
                "(extract with --include prelim, or use --test holdout)"
            )
        test_rows, pool = labelled[is_prelim], labelled[~is_prelim]
    elif test == "holdout":
        test_rows, pool = _holdout(labelled, labels, patients, holdout, seed, names)
    else:
        test_rows, pool = np.empty(0, dtype=np.int64), labelled
    _check_patients_per_class(pool, labels, patients, folds, names, test)
    sgkf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fold_list = [
            (np.sort(pool[tr]), np.sort(pool[va]))
            for tr, va in sgkf.split(np.zeros(pool.size), labels[pool], patients[pool])
        ]
    splits = Splits(test=np.sort(test_rows), pool=np.sort(pool), folds=fold_list, test_mode=test, seed=seed)
    audit_splits(splits, patients)
    return splits


def _holdout(
    labelled: np.ndarray,
    labels: np.ndarray,
    patients: np.ndarray,
    fraction: float,
    seed: int,
    names: list[str],
) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < fraction < 0.5:
        raise FastallError(f"--holdout {fraction}: expected a fraction between 0 and 0.5")
    n_splits = max(2, round(1.0 / fraction))
    groups = patients[labelled]
    for k in np.unique(labels[labelled]):
        n_pat = np.unique(groups[labels[labelled] == k]).size
        if n_pat < 2:
            raise FastallError(
                f"class {names[int(k)]!r} has only {n_pat} patient: a patient-level holdout "
                "needs at least 2 per class (use --test none)"
            )
    n_splits = min(n_splits, np.unique(groups).size)
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pool, test = next(sgkf.split(np.zeros(labelled.size), labels[labelled], groups))
    return labelled[test], labelled[pool]


def _check_patients_per_class(
    pool: np.ndarray, labels: np.ndarray, patients: np.ndarray, folds: int, names: list[str], test: str
) -> None:
    counts = {int(k): np.unique(patients[pool][labels[pool] == k]).size for k in np.unique(labels[pool])}
    fewest = min(counts.values())
    if fewest < folds:
        k = min(counts, key=counts.get)
        hint = (
            f"use --folds {fewest}"
            if fewest >= 2
            else "add patients (cross-validation needs at least 2 per class)"
            if test == "none"
            else "add patients or use --test none"
        )
        raise FastallError(
            f"class {names[k]!r} has only {fewest} patients in the training pool, fewer than "
            f"--folds {folds}: {hint}"
        )


def audit_splits(splits: Splits, patients: np.ndarray, hashes: np.ndarray | None = None) -> list[dict]:
    """Raise :class:`LeakageError` if a patient is in two of train/val/test in any fold; else audit rows.

    With the cache's content ``hashes`` each row also counts the validation and test images whose bytes are
    identical to a training image's (``identical_content_val``, ``identical_content_test``)."""
    patients = np.asarray(patients, dtype=object)
    test_p = set(patients[splits.test])
    rows = []
    for i, (train, val) in enumerate(splits.folds):
        train_p, val_p = set(patients[train]), set(patients[val])
        pairs = (
            ("train", train_p, "validation", val_p),
            ("train", train_p, "test", test_p),
            ("validation", val_p, "test", test_p),
        )
        for a_name, a, b_name, b in pairs:
            shared = sorted(a & b)
            if shared:
                raise LeakageError(
                    f"patient-level leakage in fold {i}: patient {shared[0]!r} is in both "
                    f"{a_name} and {b_name} ({len(shared)} shared patients)"
                )
        if np.intersect1d(train, val).size:
            raise LeakageError(f"fold {i}: an image is in both train and validation")
        rows.append(
            {
                "fold": i,
                "train_images": int(train.size),
                "train_patients": len(train_p),
                "val_images": int(val.size),
                "val_patients": len(val_p),
                "test_images": int(splits.test.size),
                "test_patients": len(test_p),
                "shared_patients": 0,
            }
        )
        if hashes is not None:
            hashes = np.asarray(hashes, dtype=object)
            for name, part, against in (("val", val, train), ("test", splits.test, splits.pool)):
                seen = set(hashes[against]) - {""}
                rows[-1][f"identical_content_{name}"] = int(sum(h in seen for h in hashes[part]))
    return rows


def fold_table(
    splits: Splits, labels: np.ndarray, patients: np.ndarray, class_names: list[str]
) -> list[dict]:
    """One row per patient: its class, image count and fold (or ``test``), for ``folds.csv``."""
    fold_of = splits.fold_of_row(len(labels))
    rows = {}
    for i in np.flatnonzero(fold_of >= -1):
        p = patients[i]
        row = rows.setdefault(
            p,
            {
                "patient": p,
                "class": class_names[int(labels[i])],
                "images": 0,
                "fold": "test" if fold_of[i] == -1 else int(fold_of[i]),
            },
        )
        row["images"] += 1
    return sorted(rows.values(), key=lambda r: (str(r["fold"]), r["patient"]))
