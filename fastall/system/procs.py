"""Process checks: is a pid alive (zombies count as dead), and is it still the process that wrote a lock.

A pid alone does not name a process: pids are reused, and after a container restart a lock can name this very
process or pid 1. The process start time (field 22 of ``/proc/PID/stat``, with the kernel's boot id) does.
"""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    try:  # a killed but unreaped child is a zombie: dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _start_ticks(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_start(pid: int) -> str | None:
    """Who ``pid`` is: ``BOOT_ID:START_TICKS``, equal only for the same process; None where unknown."""
    ticks = _start_ticks(pid)
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return None if ticks is None else f"{boot}:{ticks}"


def process_started_at(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch (to about a second); None where unknown."""
    ticks = _start_ticks(pid)
    try:
        btime = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return None if ticks is None else btime + ticks / os.sysconf("SC_CLK_TCK")


def holder_alive(pid: int, start: str | None = None, written: float | None = None) -> bool:
    """Is the process that wrote a lock (``pid``, its recorded ``process_start``, the lock's mtime) running?

    With a recorded start, the pid must still have it. Without one (a lock of an older fastall): this
    process's own pid is not a holder, nor is a process started after the lock was written.
    """
    if not pid_alive(pid):
        return False
    now = process_start(pid)
    if start is not None and now is not None:
        return start == now
    if pid == os.getpid():
        return False
    started = process_started_at(pid) if written is not None else None
    return not (started is not None and written is not None and started > written + 1.0)
