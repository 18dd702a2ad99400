"""The default preset's last step: per outer fold, keep the linear probe or the fine-tuned MLP, whichever an
inner patient-grouped K-fold CV on the fold's training patients alone supports (module doc).

For outer fold k, its training rows are split by patient into K inner folds (``selection.inner_splits``,
stratified, K = :data:`CHOICE_FOLDS` or the fewest patients of a class, whichever is smaller: the largest
inner training folds the patients allow, so that 4 training patients per class still compare). On every
inner split both candidates are trained exactly as the run trains them: the probe (``probe.fit_probe``, C
by its own inner CV) and the MLP by the run's protocol (``selection.select`` then ``refit``, started from
that probe), all inner heads of all folds in one stack. The MLP nests the probe (its epoch 0 computes
the probe exactly and its own epoch selection may keep it), so it is the default: the probe is kept only
when it beats the MLP beyond noise, its mean inner accuracy higher by more than :data:`MARGIN_SE` standard
error of the paired per-split differences. Every rule of ``benchmarks/default_choice_regret.py`` was scored
on identical folds; this one had the lowest worst-case regret (accuracy with ties to the probe, or the
lower inner log loss, kept a much weaker probe on noisy inner comparisons). A fold whose inner training folds
would hold fewer than :data:`MIN_PATIENTS` patients of a class keeps the probe without a comparison, and
says so. The final head follows the same rule on the inner splits of all folds together.

A kept probe replaces the fold's head by a head that computes it exactly (``layout.embed_linear``), so
head.pt, predictions.csv and every metric describe the model that was kept. The outer validation rows never
enter a decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import log_loss

from fastall.errors import FastallError
from fastall.training.config import HeadConfig, HeadResult
from fastall.training.layout import embed_linear
from fastall.training.probe import ProbeResult
from fastall.training.selection import inner_splits, refit, select

if TYPE_CHECKING:
    from fastall.training.prepared import Prepared

CHOICE_FOLDS = 5  # as many as the fewest class allows: 3 made inner training folds of 2 patients
MIN_PATIENTS = 3
MARGIN_SE = 1.0  # the probe is kept only when it beats the MLP by more than this many paired SEs
CANDIDATES = ("probe", "mlp")


@dataclass
class Choice:
    """Per outer fold the candidate kept and why; the final head's."""

    folds: list[dict] = field(default_factory=list)
    final: str = "probe"
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "rule": "per outer fold, the MLP (which starts from the probe and nests it) unless the probe's "
            f"mean accuracy over an inner K-fold (K = {CHOICE_FOLDS} or the fewest patients of a class) "
            f"patient-grouped CV of its training patients beats the MLP's by more than {MARGIN_SE:g} paired "
            f"standard error; fewer than {MIN_PATIENTS} patients of a class in an inner training fold: probe",
            "candidates": list(CANDIDATES),
            "folds": self.folds,
            "final": self.final,
            "notes": self.notes,
        }


def _softmax_of(linear: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    a, c = linear
    z = x.astype(np.float64) @ a.T + c
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _scores(y: np.ndarray, p: np.ndarray, classes: int) -> dict[str, float]:
    """Accuracy and mean log loss (the proper score that breaks accuracy's ties) of probabilities ``p``."""
    loss = log_loss(y, np.clip(p, 1e-15, 1.0), labels=list(range(classes)))
    return {"accuracy": float((p.argmax(1) == y).mean()), "log_loss": float(loss)}


def paired_margin(splits: dict[str, list[dict]]) -> float:
    """Mean inner-split accuracy difference, MLP minus probe, over its standard error (paired by split)."""
    d = np.array([m["accuracy"] - p["accuracy"] for m, p in zip(splits["mlp"], splits["probe"], strict=True)])
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
    if se > 0:
        return float(d.mean() / se)
    return float(np.sign(d.mean()) * np.inf) if d.any() else 0.0


def decide(splits: dict[str, list[dict]]) -> tuple[str, str]:
    """The rule (module doc): the candidate kept and why, from the inner splits' scores only."""
    mean = {
        n: {m: float(np.mean([s[m] for s in splits[n]])) for m in ("accuracy", "log_loss")}
        for n in CANDIDATES
    }
    z = paired_margin(splits)
    scores = (f"inner accuracy mlp {mean['mlp']['accuracy']:.4f} vs probe {mean['probe']['accuracy']:.4f}, "
              f"paired margin {z:+.2f} SE (log loss mlp {mean['mlp']['log_loss']:.4f} vs probe "
              f"{mean['probe']['log_loss']:.4f})")  # fmt: skip
    if z < -MARGIN_SE:
        return "probe", f"{scores}: the probe wins beyond noise"
    return "mlp", f"{scores}: the probe does not win beyond {MARGIN_SE:g} SE; the MLP (which nests it)"


def _fewest_patients(labels: np.ndarray, patients: np.ndarray, rows: np.ndarray) -> int:
    return min(np.unique(patients[rows][labels[rows] == c]).size for c in np.unique(labels[rows]))


def choose(
    prep: Prepared,
    config: HeadConfig,
    options: Any,
    probe: ProbeResult,
    results: list[HeadResult],
    linear_fit,
) -> Choice:
    """Compare both candidates on every outer fold (module doc) and put the kept one into ``results``."""
    labels, patients = prep.cache.labels, np.asarray(prep.cache.patients, dtype=object)
    view0 = prep.cache.features[:, 0]
    data, seed = prep.data, options.seed
    out = Choice()
    inner: list[list[tuple[np.ndarray, np.ndarray]]] = []
    for k, (train, _) in enumerate(data.folds):
        try:
            splits = inner_splits(labels, patients, train, seed=seed + 7, fold=k, folds=CHOICE_FOLDS)
        except FastallError:
            splits = []
        if not splits or min(_fewest_patients(labels, patients, tr) for tr, _ in splits) < MIN_PATIENTS:
            splits = []
        inner.append(splits)
    owner = [(k, j) for k, s in enumerate(inner) for j in range(len(s))]
    scores: dict[tuple[int, str], list[dict]] = {(k, n): [] for k in range(len(inner)) for n in CANDIDATES}
    if owner:
        folds = [inner[k][j] for k, j in owner]
        maps = linear_fit.many([tr for tr, _ in folds])
        sub = replace(data, folds=folds, pool=folds[0][0], test=np.empty(0, np.int64), plans=None,
                      linear_inits=None, final_plan=None)  # fmt: skip
        run = {"seed": seed, "precision": prep.precision}
        chosen = select(
            sub, [config], patients, inner_folds=options.inner_folds, linear_init=linear_fit, **run
        )
        heads = refit(sub, chosen, tta=False, linear_inits=[*maps, maps[0]], **run)
        for r in (r for r in heads if not r.final):
            k, j = owner[r.fold]
            va = folds[r.fold][1]
            probe_p = _softmax_of(maps[r.fold], np.asarray(view0[va], dtype=np.float32))
            for name, p in (("mlp", r.probs["val"]), ("probe", probe_p)):
                scores[k, name].append(_scores(labels[va], p, prep.data.classes))
    inner_scores: list[dict] = []
    for k in range(len(inner)):
        if not inner[k]:
            why = f"fewer than {MIN_PATIENTS} patients of a class in an inner training fold: probe kept"
            out.folds.append({"fold": k, "kept": "probe", "why": why})
            out.notes.append(f"fold {k}: too few patients per class for the probe-or-MLP choice; probe kept")
            continue
        row = {
            f"inner_{metric}": {
                name: float(np.mean([s[metric] for s in scores[k, name]])) for name in CANDIDATES
            }
            for metric in ("accuracy", "log_loss")
        }
        kept, why = decide({name: scores[k, name] for name in CANDIDATES})
        inner_scores.append(row)
        out.folds.append({"fold": k, "kept": kept, "why": why, "inner_splits": len(inner[k]), **row,
                          "inner_split_scores": {name: scores[k, name] for name in CANDIDATES}})  # fmt: skip
    if inner_scores:
        out.final = decide(
            {name: [s for k in range(len(inner)) for s in scores[k, name]] for name in CANDIDATES}
        )[0]
    _apply(prep, probe, results, out)
    return out


def _apply(prep: Prepared, probe: ProbeResult, results: list[HeadResult], choice: Choice) -> None:
    """Put the probe into the results of the folds (and the final head) that keep it."""
    k_classes = prep.data.classes
    test = prep.splits.test
    view0 = prep.cache.features[:, 0]
    keep = {row["fold"] for row in choice.folds if row["kept"] == "probe"}
    for r in results:
        if r.final and choice.final != "probe":
            continue
        if not r.final and r.fold not in keep:
            continue
        fit_index = len(prep.data.folds) if r.final else r.fold
        if fit_index >= len(probe.fits):
            continue
        fit = probe.fits[fit_index]
        linear = fit.linear_map(k_classes)
        r.state = _probe_state(r.state, linear)
        r.best_epoch = 0  # epoch 0: the start, which is the probe
        if not r.final:
            val = prep.data.folds[r.fold][1]
            r.probs["val"] = probe.oof_probs[val]
            if "val_tta" in r.probs:
                r.probs["val_tta"] = probe.oof_probs[val]
        if test.size and "test" in r.probs:
            p = _softmax_of(linear, np.asarray(view0[test], dtype=np.float32))
            r.probs["test"] = p
            if "test_tta" in r.probs:
                r.probs["test_tta"] = p


def _probe_state(state: dict[str, torch.Tensor], linear: tuple[np.ndarray, np.ndarray]) -> dict:
    """A Head state of the same shape whose output is the probe's logits exactly (``embed_linear``)."""
    names = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
    params = [state[name].unsqueeze(0).clone() for name in names]
    embed_linear(params, 0, *linear, state["mean"], state["std"])
    params[0][0, 2 * linear[0].shape[0] :] = 0.0
    params[1][0, 2 * linear[0].shape[0] :] = 0.0
    return {**state, **{name: p[0] for name, p in zip(names, params, strict=True)}}
