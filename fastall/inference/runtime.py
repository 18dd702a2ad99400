"""Fast inference backbones: the same frozen network run at a chosen precision and backend.

``fp32`` is the reference. ``bf16``/``fp16`` run under autocast; ``int8`` is static post-training quantisation
(:func:`fastall.features.quantize.quantize_int8`: torch.ao fx, x86 kernels, CPU only; per-channel weights,
histogram-calibrated activations over the full 8-bit range where the CPU has VNNI) calibrated on real images.
Backends on the CPU: ``jit`` traces and freezes with TorchScript, folding batch norm and fusing convolutions
with their activations (oneDNN); ``compile`` uses ``torch.compile`` (inductor, frozen weights; needs a C++
compiler). GPUs run eager, channels_last.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn

from fastall.errors import FastallError
from fastall.features.quantize import quantize_int8

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
BACKENDS = ("auto", "eager", "jit", "compile")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device | str) -> None:
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise FastallError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and device.type != "cpu":
        raise FastallError(f"int8 runs on the CPU only (x86 kernels); on {device.type} use bf16 or fp16")


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context of a half precision, or a no-op."""
    dtype = _AUTOCAST.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: TorchScript on the CPU, eager on a GPU."""
    if backend not in BACKENDS:
        raise FastallError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if device.type != "cpu":
        return "eager"
    if backend == "compile" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "jit"  # inductor needs a C++ compiler
    return "jit" if backend == "auto" else backend


class Runtime(nn.Module):
    """Normalised float ``[B, 3, S, S]`` -> float32 features ``[B, D]`` at one precision."""

    def __init__(
        self, module: Callable, precision: str, device: torch.device, channels_last: bool, backend: str
    ) -> None:
        super().__init__()
        self.module, self.precision, self.device = module, precision, device
        self.channels_last, self.backend = channels_last, backend
        self.int8_state: dict[str, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        x = x.contiguous(memory_format=_format(self.channels_last))
        with (
            cudnn_benchmark(self.device),
            autocast(self.precision if self.backend != "compile" else "fp32", self.device),
        ):
            return self.module(x).float()


@contextlib.contextmanager
def cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """cuDNN's autotuner (fixed input shapes) inside, on a GPU; the flag returns to what it was."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def build_runtime(
    backbone: nn.Module,
    precision: str = "fp32",
    *,
    device: torch.device | str = "cpu",
    example: torch.Tensor | None = None,
    calibration: torch.Tensor | None = None,
    int8_state: dict | None = None,
    backend: str = "auto",
) -> Runtime:
    """Wrap ``backbone`` (left untouched) for fast inference at ``precision``.

    ``example`` (normalised ``[1, 3, S, S]``) is needed for tracing; int8 also needs ``calibration``
    (normalised ``[K, 3, S, S]``) or a saved ``int8_state``.
    """
    device = torch.device(device)
    check_precision(precision, device)
    backend = resolve_backend(backend, device)
    state = None
    if precision == "int8":
        module = quantize_int8(backbone, example, calibration=calibration, state=int8_state)
        state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in module.state_dict().items()}
        channels_last = False
        backend = "eager" if backend == "compile" else backend
    else:
        module = copy.deepcopy(backbone).to(device).eval().requires_grad_(False)
        module = module.to(memory_format=torch.channels_last)
        channels_last = True
    if backend == "jit" and example is not None:
        module = _freeze(module, example, precision, channels_last)
    elif backend == "compile":
        module = _compile(module, precision)
    runtime = Runtime(module, precision, device, channels_last, backend).eval()
    runtime.int8_state = state
    if backend == "compile" and example is not None:
        with torch.inference_mode():
            runtime(example)  # compiles now rather than on the first image
    return runtime


def _format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def _freeze(module: nn.Module, example: torch.Tensor, precision: str, channels_last: bool) -> nn.Module:
    x = example.cpu().contiguous(memory_format=_format(channels_last))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad(), autocast(precision, "cpu"):
            frozen = torch.jit.freeze(torch.jit.trace(module, x, check_trace=False))
            if precision == "fp32":
                frozen = torch.jit.optimize_for_inference(frozen)
            for _ in range(2):  # the first calls specialise and fuse the graph
                frozen(x)
    return frozen


def _compile(module: nn.Module, precision: str) -> Callable:
    """``torch.compile`` with frozen weights; half precisions are cast outright (inductor fuses the rest)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    dtype = _AUTOCAST.get(precision)
    if dtype is not None:
        module = copy.deepcopy(module).to(dtype)
        compiled = torch.compile(module)
        return lambda x: compiled(x.to(dtype))
    return torch.compile(module)
