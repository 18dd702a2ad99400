"""Label efficiency: linear and kNN probes trained on 1, 2, 4, 8, ... labelled patients per class (images per
class where there are no patient groups), up to all, with R seeded draws per size, scored on each fold's
validation patients.

A draw takes, for every class, ``min(size, available)`` of the fold's training patients of that class (all
their images); the validation patients are never drawn (:func:`draws` checks it). The linear probes of all
(fold, draw) pairs of a size are one stacked fit at the fixed reference C (an inner CV has nothing to split on
one patient per class); kNN reads the fold's similarity matrix restricted to the drawn columns. The full-data
point is every training row of the fold (one "draw").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from fastall.errors import FastallError
from fastall.training.protocols import knn
from fastall.training.protocols.logistic import Problem, fit_logistic
from fastall.training.streams import derive_seed

DRAWS = 5
REACH = 0.95


@dataclass
class Draw:
    fold: int
    size: int
    draw: int
    rows: np.ndarray
    patients: list[str]
    full: bool = False

    @property
    def key(self) -> int | str:
        """The curve's x: the patients per class, or ``all`` for the fold's whole training set."""
        return "all" if self.full else self.size


def sizes_for(counts: list[int]) -> list[int]:
    """1, 2, 4, ... below the largest per-class patient count, then that count (= all)."""
    top = max(counts)
    out, s = [], 1
    while s < top:
        out.append(s)
        s *= 2
    return out + [top]


def draws(
    labels: np.ndarray,
    patients: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    *,
    repeats: int = DRAWS,
    seed: int = 0,
) -> list[Draw]:
    """Every (fold, size, draw) training subset; raises if a drawn patient is a validation patient."""
    out = []
    patients = np.asarray(patients, dtype=object)
    for f, (train, val) in enumerate(folds):
        by_class = {
            int(c): np.unique(patients[train][labels[train] == c].astype(str))
            for c in np.unique(labels[train])
        }
        sizes = sizes_for([len(p) for p in by_class.values()])
        held = set(patients[val].tolist())
        for size in sizes:
            full = all(size >= len(p) for p in by_class.values())
            for r in range(1 if full else repeats):
                rng = np.random.default_rng(derive_seed(seed, f, size, r, "efficiency", bits=63))
                chosen = []
                for c in sorted(by_class):
                    pool = by_class[c]
                    chosen += rng.choice(pool, size=min(size, len(pool)), replace=False).tolist()
                if held.intersection(chosen):
                    raise FastallError(f"label efficiency: fold {f} drew a validation patient")
                rows = train[np.isin(patients[train].astype(str), chosen)]
                out.append(Draw(f, size, r, np.sort(rows), sorted(chosen), full))
    return out


def label_efficiency(
    x: torch.Tensor,
    labels: np.ndarray,
    patients: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    classes: int,
    *,
    c: float,
    ks: tuple[int, ...] = knn.KS,
    temperature: float = knn.TEMPERATURE,
    repeats: int = DRAWS,
    seed: int = 0,
    sims: list[torch.Tensor] | None = None,
) -> dict:
    """Per draw the accuracy and balanced accuracy of the linear probe and of every kNN variant on the fold's
    validation rows; per protocol and size the mean over folds and draws with its spread over draws, and
    the smallest size reaching :data:`REACH` of the full-data accuracy."""
    all_draws = draws(labels, patients, folds, repeats=repeats, seed=seed)
    probs: list[dict[str, np.ndarray]] = [{} for _ in all_draws]
    for key in dict.fromkeys(d.key for d in all_draws):
        group = [n for n, d in enumerate(all_draws) if d.key == key]
        fits = fit_logistic(x, labels, [Problem(all_draws[n].rows, c) for n in group], classes)
        for i, n in enumerate(group):
            val = folds[all_draws[n].fold][1]
            probs[n]["linear_fixed_c"] = fits.proba_one(i, x[torch.as_tensor(val, device=x.device)])
    for f, (train, val) in enumerate(folds):
        sim = sims[f] if sims is not None else knn.similarities(x, train, val)
        ranking = knn.ranked(sim)
        for n in (n for n, d in enumerate(all_draws) if d.fold == f):
            cols = np.searchsorted(train, all_draws[n].rows)
            for (k, vote), shares in knn.votes(
                sim, labels[train], classes, ks=ks, temperature=temperature, columns=cols, ranking=ranking
            ).items():
                probs[n][f"knn{k}_{vote}"] = shares
        del sim, ranking
    scores: list[dict] = []
    for d, rows in zip(all_draws, probs, strict=True):
        val = folds[d.fold][1]
        for name, prob in rows.items():
            pred = prob.argmax(1)
            scores.append(
                {
                    "protocol": name,
                    "fold": d.fold,
                    "size": d.key,
                    "patients_per_class": d.size,
                    "draw": d.draw,
                    "train_images": int(d.rows.size),
                    "accuracy": float(accuracy_score(labels[val], pred)),
                    "balanced_accuracy": float(balanced_accuracy_score(labels[val], pred)),
                }
            )
    return {"c": c, "draws": repeats, "scores": scores, "curves": curves(scores)}


def curves(scores: list[dict]) -> dict[str, list[dict]]:
    """Per protocol: per size the mean accuracy over folds and draws, the spread (std over draws of the
    fold-mean), and ``reach``: the first size whose mean is at least REACH of the largest size's."""
    out = {}
    for name in sorted({s["protocol"] for s in scores}):
        mine = [s for s in scores if s["protocol"] == name]
        points = []
        keys = sorted({s["size"] for s in mine if s["size"] != "all"}) + ["all"]
        for size in keys:
            at = [s for s in mine if s["size"] == size]
            if not at:
                continue
            draw_ids = sorted({s["draw"] for s in at})
            per_draw = [np.mean([s["accuracy"] for s in at if s["draw"] == r]) for r in draw_ids]
            points.append(
                {
                    "size": size,
                    "patients_per_class": float(np.mean([s["patients_per_class"] for s in at])),
                    "accuracy": float(np.mean([s["accuracy"] for s in at])),
                    "balanced_accuracy": float(np.mean([s["balanced_accuracy"] for s in at])),
                    "std": float(np.std(per_draw, ddof=1)) if len(per_draw) > 1 else 0.0,
                    "low": float(np.min(per_draw)),
                    "high": float(np.max(per_draw)),
                }
            )
        full = points[-1]["accuracy"]
        reach = next((p["size"] for p in points if p["accuracy"] >= REACH * full), points[-1]["size"])
        out[name] = {"points": points, "reach_95": reach}
    return out
