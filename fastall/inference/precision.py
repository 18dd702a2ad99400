"""Faster precisions against fp32: the one agreement rule and the one calibration pick.

A precision *agrees* with fp32 when its predicted classes equal eager fp32's on at least 99.5% of the checked
images. int8 is calibrated on labelled images of every class, disjoint from the checked ones where the set
allows. `export`, `verify` and `bench` all decide with these two functions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from fastall.errors import FastallError
from fastall.inference.model import LeukemiaClassifier

MIN_PRECISION_AGREEMENT = 0.995
CALIBRATION_IMAGES = 32


def pick_images(labels: np.ndarray, n: int) -> np.ndarray:
    """About ``n`` labelled images, evenly spread over each class (every class represented)."""
    classes = sorted(int(c) for c in np.unique(labels[labels >= 0]))
    if not classes:
        raise FastallError("the cache holds no labelled images to check against")
    per = max(1, n // len(classes))
    out = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        out.append(idx[np.unique(np.linspace(0, len(idx) - 1, min(per, len(idx))).round().astype(int))])
    return np.concatenate(out)


def calibration_pick(
    labels: np.ndarray, checked: Sequence[int] | np.ndarray = (), n: int = CALIBRATION_IMAGES
) -> np.ndarray:
    """Indices of about ``n`` int8 calibration images: labelled, every class, none of ``checked``; where
    every labelled image is checked, the first ``n`` checked ones."""
    checked = np.asarray(checked, dtype=np.int64)
    rest = np.setdiff1d(np.flatnonzero(labels >= 0), checked)
    if len(rest):
        return rest[pick_images(labels[rest], n)]
    return checked[:n]


@dataclass
class Trial:
    """How one precision compared with eager fp32 on the same images."""

    precision: str
    backend: str
    images: int
    agreement: float
    max_dlogit: float
    max_dprob: float
    mean_dprob: float
    fp32_positive_rate: float

    @property
    def agrees(self) -> bool:
        return agrees(self.agreement)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agrees": self.agrees}


def agrees(agreement: float) -> bool:
    """The one rule: class agreement with fp32 of at least ``MIN_PRECISION_AGREEMENT``."""
    return agreement >= MIN_PRECISION_AGREEMENT


@torch.inference_mode()
def logits(model: LeukemiaClassifier, pixels: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """float64 CPU logits of uint8 ``pixels``, ``batch_size`` images per call."""
    return torch.cat([model(chunk).double().cpu() for chunk in pixels.split(batch_size)])


def compare_logits(precision: str, backend: str, reference: torch.Tensor, fast: torch.Tensor) -> Trial:
    """``fast`` logits (at ``precision``) against the fp32 ``reference`` logits of the same images."""
    ref, fast = reference.double().cpu(), fast.double().cpu()
    if not len(ref):
        raise FastallError("no images to compare precisions on")
    dprob = (torch.softmax(fast, 1) - torch.softmax(ref, 1)).abs()
    return Trial(
        precision=precision,
        backend=backend,
        images=len(ref),
        agreement=float((fast.argmax(1) == ref.argmax(1)).double().mean()),
        max_dlogit=float((fast - ref).abs().max()),
        max_dprob=float(dprob.max()),
        mean_dprob=float(dprob.mean()),
        fp32_positive_rate=float((ref.argmax(1) == 1).double().mean()),
    )


def try_precision(
    model: LeukemiaClassifier,
    pixels: torch.Tensor,
    precision: str,
    *,
    calibration: torch.Tensor | None = None,
    backend: str = "auto",
    reference: torch.Tensor | None = None,
) -> tuple[LeukemiaClassifier, Trial]:
    """``model`` at ``precision`` (a new model; int8 calibrated on ``calibration``) and how it compares with
    eager fp32 on ``pixels``. ``reference``: the fp32 logits of ``pixels``, where already computed."""
    if reference is None:
        reference = logits(model.optimize("fp32", backend="eager"), pixels)
    fast = model.optimize(
        precision, calibration=calibration if precision == "int8" else None, backend=backend
    )
    return fast, compare_logits(precision, fast.backend, reference, logits(fast, pixels))


@torch.inference_mode()
def latency_ms(
    models: dict[str, LeukemiaClassifier], pixels: torch.Tensor, rounds: int = 7
) -> dict[str, float]:
    """Median ms per call of each model on ``pixels``, measured interleaved (round-robin) so that a change
    of machine load affects every model alike; one warm-up call each."""
    for model in models.values():
        model(pixels)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model(pixels)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}
