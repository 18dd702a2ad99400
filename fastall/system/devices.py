"""The one device resolver and the one precision choice, for every stage.

``resolve_device`` accepts ``auto``, ``cpu``, ``cuda`` and ``cuda:N``; ``resolve_precision`` picks bf16 where
the device computes it natively and fp32 elsewhere, from public torch APIs only.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch

from fastall.errors import FastallError

DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; a clear one-line error
    for anything else or for a CUDA device this machine does not have."""
    if isinstance(device, torch.device):
        device = str(device)
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise FastallError(f"--device {device!r}: expected {DEVICES}")
    if not torch.cuda.is_available():
        raise FastallError(f"--device {device}: no CUDA device is available (use --device cpu)")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise FastallError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0..{count - 1}")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the device computes it natively (CUDA with bf16; a CPU with AVX-512 dispatch and
    the avx512_bf16 or amx_bf16 instructions), else fp32. ``bf16`` and ``fp32`` are taken as given."""
    if precision in ("fp32", "bf16"):
        return precision
    if precision != "auto":
        raise FastallError(f"precision {precision!r}: expected auto, bf16 or fp32")
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively: torch dispatches AVX-512 kernels here
    (``torch.backends.cpu.get_cpu_capability``, which honours ``ATEN_CPU_CAPABILITY``) and the CPU flags
    (``/proc/cpuinfo``, Linux) list avx512_bf16 or amx_bf16. Elsewhere (no such file): False."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The first CPU's feature flags, or an empty set where there is no readable cpuinfo."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return set()
