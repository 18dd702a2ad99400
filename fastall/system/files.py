"""File safety: every file fastall writes appears whole or not at all; test kill points between the steps."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

KILL_ENV, PAUSE_ENV = "FASTALL_TEST_KILL_AT", "FASTALL_TEST_PAUSE_AT"
_kill_hits: Counter[str] = Counter()


def kill_point(name: str) -> None:
    """Test hooks: ``FASTALL_TEST_KILL_AT=name[:n]`` SIGKILLs this process the n-th time it passes ``name``
    (``shard-tmp``, ``shard``, ``finalize``, ``cache-tmp``, ``cleanup``); ``FASTALL_TEST_PAUSE_AT`` sleeps
    there instead, for a test to kill it from outside."""
    specs = {env: os.environ.get(env) for env in (KILL_ENV, PAUSE_ENV)}
    if not any(specs.values()):
        return
    _kill_hits[name] += 1
    for env, spec in specs.items():
        point, _, nth = (spec or "").partition(":")
        if point == name and _kill_hits[name] == int(nth or 1):
            if env == KILL_ENV:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(600)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
