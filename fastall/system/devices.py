"""Device and precision resolution: what ``--device`` and ``--precision auto`` mean on this machine."""

from __future__ import annotations

import re

import torch

from fastall.errors import FastallError

_CUDA_INDEX = re.compile(r"cuda:(\d+)")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (a GPU where there is one), ``cpu``, ``cuda`` or ``cuda:N``; a clear error if it is absent."""
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = _CUDA_INDEX.fullmatch(name)
    if name != "cuda" and match is None:
        raise FastallError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise FastallError(f"--device {name}: no CUDA device is available (use --device cpu)")
    if match is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise FastallError(
            f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s) here "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
        )
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the device computes it natively (CUDA AMP, CPU avx512_bf16/AMX), else fp32."""
    if precision in ("fp32", "bf16"):
        return precision
    if precision != "auto":
        raise FastallError(f"precision {precision!r}: expected auto, bf16 or fp32")
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"
