"""What this machine computes natively, and the one machine record every benchmark JSON carries.

The CPU's instruction-set class (AVX2 / AVX512 / AVX512_BF16 / AMX) comes from the flags the CPU reports
(``torch.cpu.get_capabilities()``, else ``/proc/cpuinfo``), capped by what the kernels are allowed to use:
ATen's dispatch (``torch.backends.cpu.get_cpu_capability()``, ``ATEN_CPU_CAPABILITY``), oneDNN
(``ONEDNN_MAX_CPU_ISA``) and FBGEMM (``FBGEMM_ENABLE_INSTRUCTIONS``). Setting those caps emulates a smaller
CPU (e.g. AVX2 on an AVX-512 machine); the record then says so.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from fastall.system import openmp

CLASSES = ("baseline", "AVX2", "AVX512", "AVX512_BF16", "AMX")
DECIDING_FLAGS = ("avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni")
FLAGS = ("avx2", "avx512f", *DECIDING_FLAGS, "amx_int8", "avx512_fp16", "amx_fp16")
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "FBGEMM_ENABLE_INSTRUCTIONS")
AVX2_EMULATION_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
}
OMP_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
_TORCH_NAMES = {"avx512f": "avx512_f"}  # torch.cpu.get_capabilities() spelling, where it differs


def _rank(name: str) -> int:
    return CLASSES.index(name)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> dict[str, bool]:
    """The instruction-set flags the CPU reports (:data:`FLAGS`)."""
    caps: dict[str, Any] = {}
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        try:
            caps = dict(get())
        except Exception:  # noqa: BLE001 - fall back to /proc/cpuinfo
            caps = {}
    if caps:
        return {f: bool(caps.get(_TORCH_NAMES.get(f, f), False)) for f in FLAGS}
    try:
        with open("/proc/cpuinfo") as fh:
            reported = set(next((line for line in fh if line.startswith("flags")), "").split())
    except OSError:
        reported = set()
    return {f: f in reported for f in FLAGS}


def _hardware_class(flags: dict[str, bool]) -> str:
    if flags.get("amx_bf16"):
        return "AMX"
    if flags.get("avx512_bf16"):
        return "AVX512_BF16"
    if flags.get("avx512f"):
        return "AVX512"
    return "AVX2" if flags.get("avx2") else "baseline"


def _cap_of(name: str, value: str) -> str | None:
    """The class an ISA-limit environment variable caps the kernels at (None: no cap)."""
    v = value.strip().upper()
    if not v or v == "ALL":
        return None
    if name == "ATEN_CPU_CAPABILITY":
        return {"DEFAULT": "baseline", "AVX2": "AVX2", "AVX512": "AVX512"}.get(v)
    if "AMX" in v:
        return "AMX"
    if "BF16" in v or "FP16" in v or v.startswith("AVX10"):
        return "AVX512_BF16"
    if v.startswith("AVX512"):
        return "AVX512"
    if v.startswith("AVX"):
        return "AVX2"
    return "baseline"


@dataclass(frozen=True)
class CpuCapability:
    """The CPU's class as its flags report it (``hardware``) and as the kernels may use it (``effective``)."""

    model: str
    hardware: str
    effective: str
    aten: str
    flags: dict[str, bool] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)

    @property
    def emulated(self) -> bool:
        return self.effective != self.hardware

    @property
    def native_bf16(self) -> bool:
        return _rank(self.effective) >= _rank("AVX512_BF16")

    @property
    def native_fp16(self) -> bool:
        return bool(self.flags.get("avx512_fp16") or self.flags.get("amx_fp16")) and self.native_bf16

    @property
    def vnni(self) -> bool:
        """Whether int8 kernels multiply u8 x s8 without saturation (VNNI) at the effective class."""
        wide = self.flags.get("avx512_vnni") or self.flags.get("amx_int8")
        if _rank(self.effective) >= _rank("AVX512") and wide:
            return True
        capped_at_plain_avx2 = any(v.strip().upper() in ("AVX2", "AVX") for v in self.limits.values())
        return self.effective == "AVX2" and bool(self.flags.get("avx_vnni")) and not capped_at_plain_avx2

    @property
    def label(self) -> str:
        if self.emulated:
            return f"{self.effective} (emulated on an {self.hardware} machine)"
        return self.effective

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "emulated": self.emulated,
            "native_bf16": self.native_bf16,
            "vnni": self.vnni,
            "label": self.label,
        }


def cpu_capability() -> CpuCapability:
    """This CPU's capability, with the ISA limits in force (read from the environment each call)."""
    flags = cpu_flags()
    hardware = _hardware_class(flags)
    try:
        aten = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - older or non-x86 builds
        aten = "unknown"
    limits = {name: os.environ[name] for name in ISA_ENV if os.environ.get(name, "").strip()}
    caps = [_cap_of(name, value) for name, value in limits.items()]
    if aten.upper() in ("AVX2", "DEFAULT"):
        caps.append("AVX2" if aten.upper() == "AVX2" else "baseline")
    effective = min([hardware, *(c for c in caps if c)], key=_rank)
    return CpuCapability(cpu_model(), hardware, effective, aten, flags, limits)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable``), or None where it cannot be told."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def thread_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return {
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "omp_env": {k: os.environ[k] for k in OMP_ENV if k in os.environ},
        "omp_wait_policy_in_force": openmp.in_force() or "runtime default (spins)",
    }


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The one machine record of every benchmark JSON: CPU model and class, deciding flags, threads, torch."""
    device = torch.device(device)
    cap = cpu_capability()
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cap.model,
        "cpu_capability": cap.effective,
        "cpu_capability_label": cap.label,
        "cpu_capability_hardware": cap.hardware,
        "cpu_capability_emulated": cap.emulated,
        "aten_cpu_capability": cap.aten,
        "cpu_flags": {f: cap.flags.get(f, False) for f in DECIDING_FLAGS},
        "isa_limits": cap.limits,
        "native_bf16": cap.native_bf16,
        "vnni": cap.vnni,
        **thread_info(),
        "torch": torch.__version__,
        "device": device.type,
        "device_name": cap.model,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info
