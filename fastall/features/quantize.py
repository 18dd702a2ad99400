"""int8 extraction: the static-quantised backbone, its calibration on the dataset's own images, and the
quality check that must pass before an int8 cache is written.

Quantisation is torch.ao's FX graph mode with the x86 backend (FBGEMM/oneDNN kernels): per-channel int8
weights, activations calibrated by histogram observers over the full 8-bit range where the CPU has VNNI
(reduced range elsewhere). PT2E (``prepare_pt2e`` with the X86InductorQuantizer) is not in this torch
without torchao; the FX model runs eagerly (faster here than a TorchScript trace of it).

Calibration takes a seeded sample of the dataset's images (view 0, through the one preprocess function):
the first :data:`OBSERVER_IMAGES` feed the observers; all of them are checked against fp32
(:mod:`fastall.features.int8_quality`).
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fastall.data.loader import ImageFiles
from fastall.data.records import Record
from fastall.errors import FastallError
from fastall.preprocess import preprocess
from fastall.system import machine

INT8_ENGINE = "x86"
CALIBRATION_IMAGES = 512
OBSERVER_IMAGES = 64
QUANTIZATION = {
    "method": "torch.ao fx static",
    "engine": INT8_ENGINE,
    "weights": "per-channel symmetric int8",
    "activations": "histogram observer, full range (VNNI)",
    "calibration_images": CALIBRATION_IMAGES,
    "observer_images": OBSERVER_IMAGES,
}
# int8 extract / bf16 extract on this project's reference CPU (2 cores, AVX512_BF16 with VNNI), from
# benchmarks/results/extract_int8_cpu.json (key int8_vs_bf16_extract; tests/test_quantize.py checks it)
MEASURED_INT8_VS_BF16 = 2.47


def has_vnni() -> bool:
    """Whether the CPU's int8 kernels multiply u8 x s8 without saturation (VNNI), allowing full-range
    activations (the ISA limits in force count: an emulated AVX2 CPU has none)."""
    return machine.cpu_capability().vnni


def require_int8_cpu(device: torch.device | str) -> None:
    """Refuse int8 extraction where it does not pay: off the CPU, or on a CPU without VNNI/AMX."""
    device = torch.device(device)
    if device.type != "cpu":
        raise FastallError(f"--precision int8 runs on the CPU only (x86 kernels); on {device} use bf16")
    cap = machine.cpu_capability()
    if not cap.vnni:
        raise FastallError(
            f"--precision int8 needs a CPU with VNNI or AMX; this one ({cap.label}) has neither, where int8 "
            "is no faster than fp32 and loses range: use --precision auto"
        )


def int8_hint(device: torch.device | str, precision: str) -> str | None:
    """The one-line hint that int8 would be faster here (a VNNI CPU, another precision chosen)."""
    if precision == "int8" or torch.device(device).type != "cpu" or not has_vnni():
        return None
    speed = f" ({MEASURED_INT8_VS_BF16:.1f}x bf16 measured on 2 cores)" if MEASURED_INT8_VS_BF16 else ""
    return (
        f"this CPU has VNNI: `--precision int8` extracts faster{speed}; it changes the features, so it is "
        "used only when asked (its quality is checked against fp32 before the cache is written)"
    )


def quantize_int8(
    backbone: nn.Module,
    example: torch.Tensor | None,
    *,
    calibration: torch.Tensor | None = None,
    state: dict | None = None,
) -> nn.Module:
    """Static int8 quantisation of a copy of ``backbone`` (x86 backend), calibrated or from a saved state."""
    from torch.ao.quantization import (
        QConfig,
        default_per_channel_weight_observer,
        get_default_qconfig_mapping,
    )
    from torch.ao.quantization.observer import HistogramObserver
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if example is None or (calibration is None and state is None):
        raise FastallError("int8 needs an example input and calibration images (or a saved int8 state)")
    torch.backends.quantized.engine = INT8_ENGINE
    qconfig = QConfig(
        activation=HistogramObserver.with_args(reduce_range=not has_vnni()),
        weight=default_per_channel_weight_observer,
    )
    model = copy.deepcopy(backbone).cpu().eval().requires_grad_(False)
    model = model.to(memory_format=torch.contiguous_format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(
            model, get_default_qconfig_mapping(INT8_ENGINE).set_global(qconfig), (example.cpu(),)
        )
        if state is None:
            with torch.no_grad():
                for chunk in calibration.cpu().split(8):
                    prepared(chunk)
        quantized = convert_fx(prepared)
    if state is not None:
        # a saved state is a plain dict: give it the modules' format versions (a quantised Linear reads its
        # packed weights only when it knows the version that wrote them)
        saved = OrderedDict(state)
        saved._metadata = getattr(quantized.state_dict(), "_metadata", None)
        try:
            quantized.load_state_dict(saved)
        except (RuntimeError, KeyError) as err:
            first = str(err).splitlines()[0]
            raise FastallError(f"saved int8 state does not fit the backbone: {first}") from err
    return quantized


def calibration_indices(n_records: int, seed: int, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """A seeded sample of ``n`` record indices (all of them where fewer), in the sampled order."""
    rng = np.random.default_rng([seed, 27])
    return rng.permutation(n_records)[: min(n, n_records)]


def load_view0(
    records: Sequence[Record], indices: Sequence[int], size: int, norm: tuple[Sequence[float], ...]
) -> tuple[torch.Tensor, list[int]]:
    """Normalised view 0 ``[K, 3, S, S]`` of the decodable images among ``indices``, and which they are."""
    files = ImageFiles([records[i].path for i in indices], size)
    images, kept = [], []
    for k, index in enumerate(indices):
        _, pixels, error = files[k]
        if error is None:
            images.append(pixels)
            kept.append(int(index))
    if not images:
        raise FastallError("none of the int8 calibration images could be decoded")
    return preprocess(torch.stack(images), size, *norm), kept
