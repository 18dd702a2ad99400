"""`fastall export`: one self-contained model file, at the fastest precision that agrees with fp32.

int8 is calibrated on run images disjoint from the ones it is checked on (:mod:`fastall.inference.precision`
decides both). The choice and its agreement travel with the exported model, which
:func:`fastall.inference.artifacts.load_export` reads back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fastall import __version__
from fastall.errors import FastallError
from fastall.features.backbone import state_dict_sha256
from fastall.inference.artifacts import EXPORT_FORMAT, EXPORT_VERSION, load_run, model_from_run, open_run
from fastall.inference.model import LeukemiaClassifier
from fastall.inference.precision import (
    MIN_PRECISION_AGREEMENT,
    calibration_pick,
    latency_ms,
    logits,
    pick_images,
    try_precision,
)
from fastall.system.devices import decide_precision, resolve_precision
from fastall.system.events import Reporter, silent
from fastall.system.files import atomic_torch_save, describe_write_error
from fastall.system.jsonable import plain
from fastall.system.runfolder import check_output_file

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16", "int8")


def candidates(device: torch.device) -> tuple[str, ...]:
    """Faster precisions to try: int8 then bf16 (where native) on CPU, bf16 then fp16 on GPU."""
    if device.type == "cuda":
        return ("bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp16",)
    return ("int8", "bf16") if resolve_precision("auto", device) == "bf16" else ("int8",)


def choose_precision(
    model: LeukemiaClassifier,
    checked: torch.Tensor,
    calibration: torch.Tensor,
    *,
    precisions: Sequence[str] | None = None,
    reporter: Reporter | None = None,
) -> tuple[LeukemiaClassifier, dict[str, Any]]:
    """The fastest of ``precisions`` that agrees with fp32 and is faster than it by measured batch-1
    latency (else eager fp32), and the trials. An explicit single precision is kept if it agrees."""
    reporter = reporter or silent()
    base = model.optimize("fp32", backend="eager")
    reference = logits(base, checked)
    trials, agreeing = [], {}
    for precision in precisions or candidates(model.device):
        fast, trial = try_precision(base, checked, precision, calibration=calibration, reference=reference)
        trials.append(
            {
                "precision": precision,
                "agreement": trial.agreement,
                "max_dprob": trial.max_dprob,
                "images": trial.images,
                "agrees": trial.agrees,
            }
        )
        reporter.info(
            f"{precision}: agrees with fp32 on {trial.agreement:.1%} of {trial.images} images "
            f"(max |Δprob| {trial.max_dprob:.3g})"
        )
        if trial.agrees:
            agreeing[precision] = fast
    timings = latency_ms({"fp32": base, **agreeing}, checked[:1]) if agreeing else {}
    for t in trials:
        t["batch1_ms"] = timings.get(t["precision"])
    if timings:
        reporter.info(
            ", ".join(f"{name} {ms:.1f} ms" for name, ms in timings.items()) + " (batch 1, measured)"
        )
    fastest = min(agreeing, key=timings.__getitem__, default=None)
    if fastest is not None and (precisions is not None or timings[fastest] < timings["fp32"]):
        trial = next(t for t in trials if t["precision"] == fastest)
        return agreeing[fastest], {
            "precision": fastest,
            "agreement": trial["agreement"],
            "images": trial["images"],
            "fp32_batch1_ms": timings["fp32"],
            "trials": trials,
        }
    reason = "none agrees" if fastest is None else f"none is faster than fp32 ({timings['fp32']:.1f} ms)"
    return base, {
        "precision": "fp32",
        "agreement": 1.0,
        "images": len(checked),
        "fp32_batch1_ms": timings.get("fp32"),
        "reason": reason,
        "trials": trials,
    }


def export_deployable(
    run: str | Path,
    out: str | Path,
    *,
    precision: str = "auto",
    images: int = 200,
    data: str | Path | None = None,
    weights_path: str | Path | None = None,
    reporter: Reporter | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Export RUN with ``precision`` (``auto``: the fastest that agrees with fp32 on the run's images).

    An explicit precision is checked and recorded too; below the agreement rule it is refused.
    """
    reporter = reporter or silent()
    check_output_file(out, [run])
    if precision not in PRECISION_CHOICES:
        raise FastallError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISION_CHOICES)}")
    if precision != "auto":
        decide_precision(precision, "cpu", allowed=PRECISION_CHOICES[1:])
    folder = open_run(run)
    model = model_from_run(folder, weights_path=weights_path)
    choice: dict[str, Any] = {"precision": "fp32", "agreement": 1.0, "images": 0, "trials": []}
    if precision != "fp32":
        need = "choosing a precision"
        labels = folder.cache(need).labels
        checked = pick_images(labels, images)
        pixels = folder.images(checked, data=data, needed_for=need)
        calibration = folder.images(calibration_pick(labels, checked), data=data, needed_for=need)
        wanted = None if precision == "auto" else [precision]
        model, choice = choose_precision(model, pixels, calibration, precisions=wanted, reporter=reporter)
        if precision != "auto" and choice["precision"] != precision:
            trial = choice["trials"][-1]
            raise FastallError(
                f"{precision} agrees with fp32 on only {trial['agreement']:.1%} of "
                f"{trial['images']} run images (needs {MIN_PRECISION_AGREEMENT:.1%}): "
                "use --precision auto"
            )
    return export_model(model, out, precision_check=choice), choice


def export_run(
    run: str | Path,
    out: str | Path,
    *,
    weights_path: str | Path | None = None,
    calibration: torch.Tensor | None = None,
) -> Path:
    """Write RUN's model as one file (atomic); with ``calibration`` images also its int8 state."""
    check_output_file(out, [run])
    model = load_run(run, weights_path=weights_path)
    if calibration is not None:
        model = model.optimize("int8", calibration=calibration)
    return export_model(model, out)


def export_model(model: LeukemiaClassifier, out: str | Path, *, precision_check: dict | None = None) -> Path:
    """Write ``model``: fp32 backbone and head, preprocessing, classes, provenance, and its CPU precision
    (with the int8 state if int8) and how well that precision agreed with fp32 (``precision_check``)."""
    state = {k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()}
    blob = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "backbone_state_dict": state,
        "backbone_state_sha256": state_dict_sha256(state),
        "head_state_dict": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
        "head_config": model.head.config(),
        "image_size": model.image_size,
        "mean": list(model.mean),
        "std": list(model.std),
        "class_names": model.class_names,
        "int8_state_dict": model.int8_state(),
        "precision": model.precision,
        "precision_check": plain(precision_check),
        "provenance": {
            **plain(model.provenance),
            "fastall_version": __version__,
            "torch_version": str(torch.__version__),
        },
    }
    return atomic_save(blob, out)


def atomic_save(obj: Any, out: str | Path) -> Path:
    """``torch.save`` through the one file-safety writer; a full disk is one line."""
    out = Path(out)
    try:
        return atomic_torch_save(obj, out)
    except OSError as err:
        raise FastallError(f"{out}: cannot write: {describe_write_error(err, out.parent)}") from err
