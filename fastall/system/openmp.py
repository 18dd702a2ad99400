"""The OpenMP wait policy: passive (sleeping) threads for the command line, nothing at import.

OpenMP threads that spin while waiting hold a core another process needs: under CPU contention every parallel
region then waits a scheduler slice (batch-1 int8 and fp32 measured 10x and more slower). The OpenMP runtime
reads ``OMP_WAIT_POLICY`` once, when torch loads it, so only a process entry point can choose it: the CLI and
the benchmark scripts call :func:`prefer_passive` before anything imports torch. ``OMP_WAIT_POLICY=ACTIVE``
keeps spinning. Importing fastall changes nothing.
"""

from __future__ import annotations

import os
import sys

ENV = "OMP_WAIT_POLICY"
_chosen: str | None = None


def prefer_passive() -> str | None:
    """Default ``OMP_WAIT_POLICY`` to PASSIVE for this process (when torch has not loaded OpenMP yet);
    returns the policy in force."""
    global _chosen
    if "torch" not in sys.modules:
        os.environ.setdefault(ENV, "PASSIVE")
        _chosen = os.environ[ENV]
    return in_force()


def in_force() -> str | None:
    """The wait policy the OpenMP runtime runs under (None: the runtime's default, spinning)."""
    return _chosen or os.environ.get(ENV) or None
