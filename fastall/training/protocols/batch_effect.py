"""The batch-effect score: do the features cluster by patient rather than by class?

For each labelled image, its k = 10 nearest neighbours (cosine, standardised view-0 features, itself
excluded): the share from the same patient and the share of the same class, each beside its chance level (the
share a random pick of k other images would have: ``(n_patient - 1) / (N - 1)`` and ``(n_class - 1) /
(N - 1)``). The same-patient excess (share minus chance) gets a 95% patient-bootstrap interval (patients
resampled, :mod:`fastall.training.bootstrap`'s draws); the run warns when it exceeds the same-class excess
with an interval above zero: the features separate patients more than classes.

Patient identification: each patient's images are split in two halves (seeded); a cosine kNN (k = 10,
weighted vote) trained on one half names the patient of every image of the other, and back. Its accuracy is
set beside two chance levels: a uniform guess among the patients, and a guess that knows the class and
nothing else (the share of the class's reference images that are the image's patient's).
"""

from __future__ import annotations

import numpy as np
import torch

from fastall.training.bootstrap import patient_codes, patient_counts
from fastall.training.protocols import knn

NEIGHBOURS = 10
BLOCK = 2048


def _neighbours(
    x: torch.Tensor, k: int, half: np.ndarray | None = None
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """``[N, k]`` indices of each row's k most similar other rows (rows already unit length), and with
    ``half`` (bool per row) the k most similar rows of the other half with their similarities, from the
    same block products."""
    out, cross_i, cross_v = [], [], []
    other = None if half is None else torch.as_tensor(half, device=x.device)
    for start in range(0, x.shape[0], BLOCK):
        sim = x[start : start + BLOCK] @ x.T
        idx = torch.arange(start, min(start + BLOCK, x.shape[0]), device=x.device)
        sim[torch.arange(idx.numel(), device=x.device), idx] = -torch.inf
        out.append(sim.topk(min(k, x.shape[0] - 1), dim=1).indices)
        if other is not None:
            sim.masked_fill_(other[idx][:, None] == other[None, :], -torch.inf)
            top = sim.topk(min(k, x.shape[0] - 1), dim=1)
            cross_i.append(top.indices)
            cross_v.append(top.values)
    cross = (torch.cat(cross_i), torch.cat(cross_v)) if other is not None else None
    return torch.cat(out), cross


def batch_effect(
    x: torch.Tensor,
    labels: np.ndarray,
    patients: np.ndarray,
    *,
    k: int = NEIGHBOURS,
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """The score of the module doc on labelled rows ``x [N, D]`` (raw features)."""
    labels = np.asarray(labels, dtype=np.int64)
    codes = patient_codes(patients)
    n, n_pat = labels.size, int(codes.max()) + 1
    mean, scale = knn.standardiser(x, np.arange(n))
    unit = torch.nn.functional.normalize((x.float() - mean) / scale, dim=1)
    grouped = n_pat < n
    half = _halves(codes, seed) if grouped else None
    nb_t, cross = _neighbours(unit, k, half)
    nb = nb_t.cpu().numpy()
    same_patient = (codes[nb] == codes[:, None]).mean(1)
    same_class = (labels[nb] == labels[:, None]).mean(1)
    per_patient = np.bincount(codes, minlength=n_pat)
    per_class = np.bincount(labels)
    chance_patient = (per_patient[codes] - 1) / max(n - 1, 1)
    chance_class = (per_class[labels] - 1) / max(n - 1, 1)
    excess_p = same_patient - chance_patient
    excess_c = same_class - chance_class
    counts = patient_counts(n_pat, resamples, seed)
    sums = np.stack([np.bincount(codes, weights=v, minlength=n_pat) for v in (excess_p, excess_c)])
    images = counts @ per_patient
    boot_p, boot_c = (counts @ sums[0]) / images, (counts @ sums[1]) / images
    ci_p = [float(v) for v in np.percentile(boot_p, [2.5, 97.5])]
    warn = bool(grouped and excess_p.mean() > excess_c.mean() and ci_p[0] > 0)
    out = {
        "k": k,
        "images": n,
        "patients": n_pat,
        "same_patient_share": float(same_patient.mean()),
        "same_patient_chance": float(chance_patient.mean()),
        "same_patient_excess": float(excess_p.mean()),
        "same_patient_excess_ci": ci_p,
        "same_class_share": float(same_class.mean()),
        "same_class_chance": float(chance_class.mean()),
        "same_class_excess": float(excess_c.mean()),
        "same_class_excess_ci": [float(v) for v in np.percentile(boot_c, [2.5, 97.5])],
        "ci": f"patient bootstrap, percentile, 95%, {resamples} resamples",
        "warning": None,
        "patient_identification": patient_identification(cross, half, labels, codes) if grouped else None,
    }
    if not grouped:
        out["note"] = "every image is its own patient: there is no patient effect to measure"
    if warn:
        out["warning"] = (
            f"the features separate patients more than classes: {100 * out['same_patient_share']:.0f}% of "
            f"each image's {k} nearest neighbours come from its own patient (chance "
            f"{100 * out['same_patient_chance']:.1f}%), an excess of {100 * excess_p.mean():.0f} points "
            f"against {100 * excess_c.mean():.0f} for its class; a model may learn the patient (stain, "
            "slide) instead of the cell"
        )
    return out


def _halves(codes: np.ndarray, seed: int) -> np.ndarray:
    """Each patient's images split in two halves (seeded)."""
    rng = np.random.default_rng([seed, 0x1D])
    half = np.zeros(codes.size, dtype=bool)
    for p in np.unique(codes):
        rows = np.flatnonzero(codes == p)
        half[rng.permutation(rows)[: rows.size // 2]] = True
    return half


def patient_identification(
    cross: tuple[torch.Tensor, torch.Tensor], half: np.ndarray, labels: np.ndarray, codes: np.ndarray
) -> dict:
    """Which patient is this? Each image's nearest images of the other half vote (weighted) for their
    patient; accuracy beside a uniform guess and a guess that knows the class."""
    index, value = cross
    n_pat = int(codes.max()) + 1
    code_t = torch.as_tensor(codes, device=index.device)
    weight = torch.exp((value.double() - 1.0) / knn.TEMPERATURE)
    weight = torch.where(torch.isfinite(value), weight, torch.zeros_like(weight))
    votes = torch.zeros(index.shape[0], n_pat, dtype=torch.float64, device=index.device)
    votes.scatter_add_(1, code_t[index], weight)
    called = votes.argmax(1).cpu().numpy()
    correct, chance_class = 0.0, 0.0
    n_class = int(labels.max()) + 1
    for side in (True, False):
        query, ref = half == side, half != side
        ref_patient = np.bincount(codes[ref], minlength=n_pat)
        ref_class = np.bincount(labels[ref], minlength=n_class)
        correct += float((called[query] == codes[query]).sum())
        chance_class += float((ref_patient[codes[query]] / np.maximum(ref_class[labels[query]], 1)).sum())
    total = codes.size
    return {
        "method": f"images split in halves within each patient; cosine kNN (k = {NEIGHBOURS}, weighted) of "
        "each half against the other",
        "accuracy": correct / total,
        "chance_uniform": 1.0 / n_pat,
        "chance_knowing_class": chance_class / total,
    }
