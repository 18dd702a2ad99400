"""Deployment precision: the fastest precision whose predictions agree with fp32 on the run's own images.

int8 is calibrated on images disjoint from the ones it is checked on. A candidate is accepted when its
predicted classes agree with eager fp32 on at least 99.5% of the checked images; the choice and its agreement
travel with the exported model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastall.errors import FastallError
from fastall.features.cache import read_cache
from fastall.inference.model import LeukemiaClassifier, check_cache, export_model, head_file, load_head
from fastall.inference.verify import (
    CALIBRATION_IMAGES,
    MIN_PRECISION_AGREEMENT,
    _data_root,
    load_images,
    pick_images,
)
from fastall.training.engine import resolve_precision

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16", "int8")


def candidates(device: torch.device) -> tuple[str, ...]:
    """Faster precisions, fastest first: int8 then bf16 (where native) on CPU, bf16 then fp16 on GPU."""
    if device.type == "cuda":
        return ("bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp16",)
    return ("int8", "bf16") if resolve_precision("auto", device) == "bf16" else ("int8",)


def run_images(
    run: str | Path, n: int, *, data: str | Path | None = None, calibration: int = CALIBRATION_IMAGES
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(checked, calibration)``: disjoint sets of the run's images, both classes, decoded and resized."""
    record = load_head(head_file(run))
    cache_path = Path(record.get("cache_path") or "")
    if not cache_path.is_file():
        raise FastallError(
            f"{run}: choosing a precision needs the run's images, but its cache {cache_path} is not here"
        )
    fc = check_cache(record, read_cache(cache_path, load_features=False), head_file(run))
    root, size = _data_root(fc, data), int(record["key_params"]["image_size"])
    checked = pick_images(fc.labels, n)
    rest = np.setdiff1d(np.flatnonzero(fc.labels >= 0), checked)
    calib = pick_images(fc.labels[rest], calibration) if len(rest) else checked[:calibration]
    calib = rest[calib] if len(rest) else calib
    return (
        load_images([root / fc.paths[i] for i in checked], size),
        load_images([root / fc.paths[i] for i in calib], size),
    )


@torch.inference_mode()
def _logits(model: LeukemiaClassifier, pixels: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(chunk).double().cpu() for chunk in pixels.split(32)])


def choose_precision(
    model: LeukemiaClassifier,
    checked: torch.Tensor,
    calibration: torch.Tensor,
    *,
    precisions: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Leave ``model`` at the first of ``precisions`` that agrees with fp32 (else fp32); return the trials."""
    model.optimize("fp32", backend="eager")
    reference = _logits(model, checked)
    trials = []
    for precision in precisions or candidates(model.device):
        model.optimize(precision, calibration=calibration if precision == "int8" else None)
        fast = _logits(model, checked)
        agree = float((fast.argmax(1) == reference.argmax(1)).double().mean())
        dprob = float((torch.softmax(fast, 1) - torch.softmax(reference, 1)).abs().max())
        n = len(checked)
        trials.append({"precision": precision, "agreement": agree, "max_dprob": dprob, "images": n})
        log(f"{precision}: agrees with fp32 on {agree:.1%} of {n} images (max |Δprob| {dprob:.3g})")
        if agree >= MIN_PRECISION_AGREEMENT:
            return {"precision": precision, "agreement": agree, "images": len(checked), "trials": trials}
    model.optimize("fp32", backend="eager")
    return {"precision": "fp32", "agreement": 1.0, "images": len(checked), "trials": trials}


def export_deployable(
    run: str | Path,
    out: str | Path,
    *,
    precision: str = "auto",
    images: int = 200,
    data: str | Path | None = None,
    weights_path: str | Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[Path, dict[str, Any]]:
    """Export RUN with ``precision`` (``auto``: the fastest that agrees with fp32 on the run's images).

    An explicit precision is checked and recorded too; below 99.5% agreement it is refused.
    """
    if precision not in PRECISION_CHOICES:
        raise FastallError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISION_CHOICES)}")
    model = LeukemiaClassifier.from_run(run, weights_path=weights_path)
    choice = {"precision": "fp32", "agreement": 1.0, "images": 0, "trials": []}
    if precision != "fp32":
        checked, calibration = run_images(run, images, data=data)
        wanted = None if precision == "auto" else [precision]
        choice = choose_precision(model, checked, calibration, precisions=wanted, log=log)
        if precision != "auto" and choice["precision"] != precision:
            trial = choice["trials"][-1]
            raise FastallError(
                f"{precision} agrees with fp32 on only {trial['agreement']:.1%} of "
                f"{trial['images']} run images (needs {MIN_PRECISION_AGREEMENT:.1%}): "
                "use --precision auto"
            )
    return export_model(model, out, precision_check=choice), choice


def load_for_inference(
    path: str | Path,
    *,
    device: str = "cpu",
    precision: str | None = None,
    backend: str = "auto",
    weights_path: str | Path | None = None,
) -> LeukemiaClassifier:
    """A run or an export at ``precision`` (None: the model's own, e.g. an export's int8) and ``backend``.

    fp32 runs eagerly unless a backend is named; int8 for a run is calibrated on the run's own images.
    """
    from fastall.inference.model import load_model
    from fastall.inference.verify import run_calibration_images

    model = load_model(path, device=device, weights_path=weights_path)
    wanted = precision or model.precision
    if wanted == model.precision and backend in ("auto", model.backend):
        return model
    calibration, state = None, model.int8_state()
    if wanted == "int8" and state is None:
        if "export" in model.provenance:
            raise FastallError(
                f"{path}: this exported model has no int8 state: export it with "
                "`fastall export --precision int8` (or auto)"
            )
        calibration = run_calibration_images(path)
    if wanted == "fp32" and backend == "auto":
        backend = "eager"
    return model.optimize(
        wanted, calibration=calibration, int8_state=state if wanted == "int8" else None, backend=backend
    )
