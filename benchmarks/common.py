"""Shared by the benchmark scripts: AVX2 emulation by re-exec, a CPU burner for the loaded state, results.

Every result JSON carries :func:`fastall.system.machine.machine_info` (CPU model, capability class, the flags
that decide the precision, threads, torch). ``--emulate avx2`` restarts the script with the ISA limits of
:data:`fastall.system.machine.AVX2_EMULATION_ENV` (read by ATen, oneDNN and FBGEMM at process start): an
AVX2 CPU emulated on a bigger one, recorded as such (``cpu_capability_label``), never a real AVX2 machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastall.system import openmp

openmp.prefer_passive()  # before torch loads OpenMP (fastall.system.machine imports torch)

from fastall.system.jsonable import plain  # noqa: E402
from fastall.system.machine import AVX2_EMULATION_ENV, machine_info  # noqa: E402

EMULATIONS = {"avx2": AVX2_EMULATION_ENV}


def add_emulate_option(parser: Any) -> None:
    parser.add_argument(
        "--emulate",
        choices=["native", *EMULATIONS],
        default="native",
        help="avx2: restart with ATen/oneDNN/FBGEMM limited to AVX2 (an emulated AVX2 CPU, labelled so)",
    )


def apply_emulation(name: str) -> None:
    """Restart this script with ``name``'s ISA limits unless they are already in force (before any work)."""
    env = EMULATIONS.get(name)
    if env is None or all(os.environ.get(k) == v for k, v in env.items()):
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})


@contextmanager
def cpu_load(burners: int, settle_s: float = 1.0) -> Iterator[list[int]]:
    """``burners`` busy-looping processes (the loaded state); killed, by their own pids, on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(burners)]
    try:
        time.sleep(settle_s)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def write_result(path: str | Path, result: dict[str, Any], device: str = "cpu") -> Path:
    """``result`` with the machine record, as JSON at ``path`` (folders made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {**result, "machine": machine_info(device)}
    path.write_text(json.dumps(plain(result), indent=2) + "\n")
    return path
