"""Device and precision resolution: what ``--device`` and ``--precision auto`` mean on this machine."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch

from fastall.errors import FastallError
from fastall.system import machine

PRECISIONS = ("fp32", "bf16", "fp16")

_CUDA_INDEX = re.compile(r"cuda:(\d+)")

DEVICE_RULE = "auto (every command's default): cuda if a GPU is available, else cpu; or cpu, cuda, cuda:N."


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


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``--precision`` resolved to on one device, and why (recorded in caches, runs and exports)."""

    requested: str
    precision: str
    device: str
    capability: str
    reason: str
    native: bool = True

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self) -> dict[str, Any]:
        """Flat attributes for a cache or a run: the request, the decision, the reason, the CPU's class."""
        cap = machine.cpu_capability()
        return {
            "precision_requested": self.requested,
            "precision": self.precision,
            "precision_reason": self.reason,
            "precision_capability": self.capability,
            "cpu_capability": cap.effective,
            "cpu_capability_label": cap.label,
            "cpu_flags": {f: cap.flags.get(f, False) for f in machine.DECIDING_FLAGS},
        }


def precision_alias(precision: str, amp: bool | None, amp_dtype: str | None) -> str:
    """``--precision`` with the older ``--amp/--no-amp`` and ``--amp-dtype`` as aliases: --no-amp is fp32,
    --amp (or --amp-dtype alone) is autocast at ``amp_dtype`` (bf16 unless given)."""
    if amp is None and amp_dtype is None:
        return precision
    alias = "fp32" if amp is False else (amp_dtype or "bf16")
    if precision not in ("auto", alias):
        flag = "--no-amp" if amp is False else f"--amp-dtype {alias}" if amp_dtype else "--amp"
        raise FastallError(f"--precision {precision} contradicts {flag} (means {alias}): give one of them")
    return alias


def decide_precision(
    precision: str, device: str | torch.device, *, allowed: Sequence[str] = PRECISIONS
) -> PrecisionChoice:
    """The one precision resolver (extract, verify, bench, predict, export, train-head).

    ``auto``: on CUDA bf16, or fp16 where the GPU lacks bf16; on the CPU bf16 only where the CPU computes it
    natively (avx512_bf16 or AMX), else fp32 (run channels_last). An explicit precision the device cannot
    compute is refused; bf16 on a CPU without native bf16 is allowed (emulated, slower), and says so.
    """
    device = resolve_device(device)
    choices = ("auto", *allowed)
    if precision not in choices:
        raise FastallError(f"precision {precision!r}: expected {', '.join(choices[:-1])} or {choices[-1]}")
    if device.type == "cuda":
        return _cuda_choice(precision, device, allowed)
    cap = machine.cpu_capability()
    made = partial(PrecisionChoice, precision, device=str(device), capability=cap.label)
    if precision == "auto":
        if cap.native_bf16 and "bf16" in allowed:
            native = "AMX" if cap.effective == "AMX" else "avx512_bf16"
            return made("bf16", reason=f"auto: this CPU computes bf16 natively ({native})")
        return made("fp32", reason=f"auto: no native bf16 on this CPU ({cap.label}): fp32, channels_last")
    if precision == "bf16" and not cap.native_bf16:
        return made(
            "bf16",
            reason=f"bf16 as asked; emulated on this CPU ({cap.label}), slower than fp32",
            native=False,
        )
    if precision == "fp16" and not cap.native_fp16:
        raise FastallError(
            f"precision fp16 on the CPU: this CPU ({cap.label}) has no native fp16 (avx512_fp16/amx_fp16): "
            "use auto, fp32 or bf16"
        )
    if precision == "int8" and not cap.vnni:
        return made("int8", reason=f"int8 as asked; no VNNI on this CPU ({cap.label}): reduced-range int8")
    return made(precision, reason=f"{precision} as asked")


def _cuda_choice(precision: str, device: torch.device, allowed: Sequence[str]) -> PrecisionChoice:
    name = torch.cuda.get_device_name(device)
    made = partial(PrecisionChoice, precision, device=str(device), capability=name)
    bf16 = torch.cuda.is_bf16_supported()
    if precision == "auto":
        if bf16 and "bf16" in allowed:
            return made("bf16", reason=f"auto: {name} computes bf16")
        if "fp16" in allowed:
            return made("fp16", reason=f"auto: {name} has no bf16: fp16")
        return made("fp32", reason=f"auto: {name} has no bf16")
    if precision == "bf16" and not bf16:
        raise FastallError(f"precision bf16 on {device}: {name} does not compute bf16: use fp16 or auto")
    if precision == "int8":
        raise FastallError(f"precision int8 runs on the CPU only (x86 kernels); on {device} use bf16 or fp16")
    return made(precision, reason=f"{precision} as asked")


def resolve_precision(
    precision: str, device: str | torch.device, allowed: Sequence[str] = ("fp32", "bf16")
) -> str:
    """``auto``/explicit precision -> the precision used (see :func:`decide_precision`)."""
    return decide_precision(precision, device, allowed=allowed).precision
