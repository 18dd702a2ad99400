"""The quality check an int8 backbone must pass before an int8 cache is written, and the calibrated build.

On a seeded sample of the dataset's images (view 0, :func:`fastall.features.quantize.calibration_indices`):
per-image cosine of int8 to fp32 features (median and 1st percentile at least :data:`MIN_COSINE`) and the
standardised logistic probe's accuracy (:func:`fastall.training.probe.fit_probe`) on a held-out half of the
labelled ones, int8 at most :data:`MAX_PROBE_DROP` below fp32. A failure refuses with the figures.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fastall.data.records import Record
from fastall.errors import FastallError
from fastall.features.quantize import (
    CALIBRATION_IMAGES,
    OBSERVER_IMAGES,
    calibration_indices,
    load_view0,
    quantize_int8,
)

MIN_COSINE = 0.99
MAX_PROBE_DROP = 0.005


@torch.inference_mode()
def features_of(model: nn.Module, x: torch.Tensor, batch: int = 32) -> np.ndarray:
    """float32 ``[K, D]`` features of normalised images, ``batch`` at a time, channels_last."""
    out = [model(c.contiguous(memory_format=torch.channels_last)).float() for c in x.split(batch)]
    return torch.cat(out).numpy()


@dataclass
class Int8Quality:
    """How int8 features compare with fp32 on the calibration images; ``passed`` decides."""

    images: int
    cosine_median: float
    cosine_p1: float
    probe_images: int = 0
    probe_held_out: int = 0
    probe_accuracy_fp32: float | None = None
    probe_accuracy_int8: float | None = None
    probe_note: str = ""
    min_cosine: float = MIN_COSINE
    max_probe_drop: float = MAX_PROBE_DROP
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def line(self) -> str:
        probe = (
            f"probe accuracy fp32 {self.probe_accuracy_fp32:.4f}, int8 {self.probe_accuracy_int8:.4f} "
            f"on {self.probe_held_out} held-out images"
            if self.probe_accuracy_int8 is not None
            else f"probe not checked ({self.probe_note})"
        )
        return (
            f"per-image cosine to fp32 median {self.cosine_median:.4f}, 1st percentile {self.cosine_p1:.4f} "
            f"on {self.images} images; {probe}"
        )


def held_out_split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labelled rows split in two halves per class (seeded): ``(train, held_out)``."""
    rng = np.random.default_rng([seed, 28])
    train, test = [], []
    for c in np.unique(labels[labels >= 0]):
        rows = rng.permutation(np.flatnonzero(labels == c))
        train.append(rows[::2])
        test.append(rows[1::2])
    if not train:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def check_quality(
    fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, classes: int, seed: int = 0
) -> Int8Quality:
    """Per-image cosine of int8 to fp32 features, and the standardised logistic probe's held-out accuracy
    on each (fit on one half of the labelled images, scored on the other)."""
    from fastall.training.probe import fit_probe

    a, b = fp32.astype(np.float64), int8.astype(np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    cos = (a * b).sum(axis=1) / norms
    quality = Int8Quality(len(cos), float(np.median(cos)), float(np.percentile(cos, 1)))
    if quality.cosine_median < MIN_COSINE or quality.cosine_p1 < MIN_COSINE:
        quality.failures.append(f"per-image cosine below {MIN_COSINE}")
    train, test = held_out_split(labels, seed)
    if len(np.unique(labels[train])) < 2 or not len(test):
        quality.probe_note = "fewer than two classes among the labelled calibration images"
        return quality
    accuracy = []
    for x in (fp32, int8):
        fit = fit_probe(x[train], labels[train], groups[train], classes=classes, seed=seed)
        accuracy.append(float((fit.proba(x[test], classes).argmax(1) == labels[test]).mean()))
    quality.probe_images, quality.probe_held_out = len(train) + len(test), len(test)
    quality.probe_accuracy_fp32, quality.probe_accuracy_int8 = accuracy
    if accuracy[0] - accuracy[1] > MAX_PROBE_DROP + 1e-12:
        quality.failures.append(f"probe accuracy more than {MAX_PROBE_DROP} below fp32's")
    return quality


@dataclass
class Int8Backbone:
    """The calibrated int8 backbone, the images it was calibrated and checked on, and the check's figures."""

    model: nn.Module
    quality: Int8Quality
    calibration_paths: list[str]

    def attrs(self) -> dict[str, Any]:
        """Cache attributes: the quality figures and the calibration set."""
        return {"int8_quality": self.quality.to_dict(), "int8_calibration": self.calibration_paths}


def build_int8(
    backbone: nn.Module,
    records: Sequence[Record],
    *,
    size: int,
    norm: tuple[Sequence[float], Sequence[float]],
    seed: int,
    classes: int,
    n: int = CALIBRATION_IMAGES,
) -> Int8Backbone:
    """Quantise ``backbone`` on a seeded sample of ``records`` and check it against fp32; refuse (one line,
    with the figures) when the check fails."""
    x, kept = load_view0(records, calibration_indices(len(records), seed, n), size, norm)
    fp32_model = copy.deepcopy(backbone).cpu().eval().requires_grad_(False)
    fp32_model = fp32_model.to(memory_format=torch.channels_last)
    reference = features_of(fp32_model, x)
    model = quantize_int8(backbone, x[:1], calibration=x[:OBSERVER_IMAGES])
    labels = np.array([records[i].label for i in kept], dtype=np.int64)
    groups = np.array([records[i].patient for i in kept], dtype=object)
    quality = check_quality(reference, features_of(model, x), labels, groups, classes=classes, seed=seed)
    if not quality.passed:
        raise FastallError(
            f"int8 refused: its features fail the quality check ({'; '.join(quality.failures)}): "
            f"{quality.line()}; use --precision bf16 or fp32"
        )
    return Int8Backbone(model, quality, [records[i].rel_path for i in kept])
