"""Head against linear probe: a paired patient bootstrap of the differences in pooled out-of-fold AUC and log
loss, and one verdict that means something.

Both models are scored on the same out-of-fold images. Each resample draws patients with replacement (the
draws of :mod:`fastall.training.uncertainty`, so the intervals match those train-head records), and both
differences are computed on the same resample. The verdict:

- ``is`` the probe: every fold kept the probe (the default preset's choice, or epoch 0 of a head started as
  the probe), so the two are one model;
- ``beats``: one difference's 95% interval favours the head (AUC above 0, or log loss below 0) and the other
  does not favour the probe;
- ``loses to``: the mirror image;
- ``indistinguishable from``: otherwise (both intervals cover 0, or they disagree), with both numbers.
"""

from __future__ import annotations

import math

import numpy as np

from fastall.training.bootstrap import patient_codes, patient_counts
from fastall.training.uncertainty import LEVEL, MIN_PATIENTS, RESAMPLES, resampled_metrics

EPS = 1e-15


def image_log_loss(y: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Per-image cross-entropy ``-log p[y]`` of normalised, clipped probabilities."""
    p = np.asarray(prob, dtype=np.float64)
    p = p / np.clip(p.sum(1, keepdims=True), EPS, None)
    return -np.log(np.clip(p[np.arange(y.size), y], EPS, 1.0))


def replicate_scores(
    y: np.ndarray, prob: np.ndarray, codes: np.ndarray, counts: np.ndarray, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """float ``[B]`` each: the AUC (binary, or one-vs-rest macro) and the mean log loss of every resample."""
    p = np.asarray(prob, dtype=np.float64)
    p = p / np.clip(p.sum(1, keepdims=True), EPS, None)
    auc = resampled_metrics(counts, y, p, codes, classes)["auc"]
    n = counts.shape[1]
    loss = counts @ np.bincount(codes, weights=image_log_loss(y, p), minlength=n)
    images = counts @ np.bincount(codes, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return auc, loss / images


def _interval(values: np.ndarray, level: float) -> list[float] | None:
    v = values[np.isfinite(values)]
    if not v.size:
        return None
    tail = 100 * (1 - level) / 2
    return [float(x) for x in np.percentile(v, [tail, 100 - tail])]


def paired_verdict(
    labels: np.ndarray,
    head_prob: np.ndarray,
    probe_prob: np.ndarray,
    patients: np.ndarray,
    *,
    classes: int,
    head_is_probe: bool = False,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """The differences head - probe in AUC and log loss on the same rows, their paired patient-bootstrap
    intervals and the verdict (module docstring)."""
    y = np.asarray(labels, dtype=np.int64)
    codes = patient_codes(patients)
    n_patients = int(codes.max()) + 1 if codes.size else 0
    full = np.ones((1, n_patients))
    auc_h, loss_h = replicate_scores(y, head_prob, codes, full, classes)
    auc_p, loss_p = replicate_scores(y, probe_prob, codes, full, classes)
    out: dict = {
        "method": f"paired patient bootstrap, {resamples} resamples, percentile {level:.0%}",
        "images": int(y.size),
        "patients": n_patients,
        "head": {"auc": float(auc_h[0]), "log_loss": float(loss_h[0])},
        "probe": {"auc": float(auc_p[0]), "log_loss": float(loss_p[0])},
        "auc_difference": float(auc_h[0] - auc_p[0]),
        "log_loss_difference": float(loss_h[0] - loss_p[0]),
        "auc_ci": None,
        "log_loss_ci": None,
        "reliable": n_patients >= MIN_PATIENTS,
    }
    if n_patients >= 2:
        counts = patient_counts(n_patients, resamples, seed)
        a_h, l_h = replicate_scores(y, head_prob, codes, counts, classes)
        a_p, l_p = replicate_scores(y, probe_prob, codes, counts, classes)
        out["auc_ci"], out["log_loss_ci"] = _interval(a_h - a_p, level), _interval(l_h - l_p, level)
    out["verdict"] = _decide(out, head_is_probe)
    out["text"] = verdict_text(out)
    return out


def _decide(d: dict, head_is_probe: bool) -> str:
    if head_is_probe:
        return "is"
    auc, loss = d["auc_ci"], d["log_loss_ci"]
    better = (auc is not None and auc[0] > 0, loss is not None and loss[1] < 0)
    worse = (auc is not None and auc[1] < 0, loss is not None and loss[0] > 0)
    if any(better) and not any(worse):
        return "beats"
    if any(worse) and not any(better):
        return "loses to"
    return "indistinguishable from"


def _signed(value: float, ci: list[float] | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else " [no interval]")


def verdict_text(d: dict) -> str:
    """One line: the verdict with both differences and their intervals."""
    if d["verdict"] == "is":
        return (
            "The head IS the linear probe: every fold kept the probe (the default preset's probe-or-MLP "
            "choice, or epoch 0 of a head started as the probe) "
            f"(pooled out-of-fold AUC {d['head']['auc']:.3f}, log loss {d['head']['log_loss']:.3f})"
        )
    word = {"beats": "beats", "loses to": "LOSES TO"}.get(d["verdict"], "is indistinguishable from")
    caveat = "" if d["reliable"] else f" (only {d['patients']} patients: the intervals are unreliable)"
    return (
        f"Head {word} the linear probe on pooled out-of-fold predictions: AUC difference "
        f"{_signed(d['auc_difference'], d['auc_ci'])}, log-loss difference "
        f"{_signed(d['log_loss_difference'], d['log_loss_ci'])} "
        f"(head - probe, paired patient bootstrap 95% CI){caveat}"
    )
