"""One injectable hook for fault tests.

The library names its durable steps with ``reached(name)`` (``shard-tmp``, ``shard``, ``finalize``,
``cache-tmp``, ``cleanup``, ``publish-old``, ``publish-new``, ...). Nothing happens there unless a hook is
installed: a test fixture installs one (``installed(hook)``), and the CLI installs ``env_hook()`` only when a
``FASTALL_TEST_*`` variable asks for it. ``disk_full(name)`` asks the same hook whether the writes at ``name``
should fail as on a full disk.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

KILL_ENV, PAUSE_ENV, ENOSPC_ENV = "FASTALL_TEST_KILL_AT", "FASTALL_TEST_PAUSE_AT", "FASTALL_TEST_ENOSPC_AT"
INTERRUPT_ENV = "FASTALL_TEST_INTERRUPT_AT"
TEST_ENVS = (KILL_ENV, PAUSE_ENV, ENOSPC_ENV, INTERRUPT_ENV)

Hook = Callable[[str], bool | None]
_hook: Hook | None = None


def reached(name: str) -> None:
    """The library passes the durable step ``name``."""
    if _hook is not None:
        _hook(name)


def disk_full(name: str) -> bool:
    """Whether the installed hook makes the writes at ``name`` fail as on a full disk."""
    return bool(_hook is not None and _hook("enospc:" + name))


def install(hook: Hook | None) -> Hook | None:
    """Install ``hook`` (None removes it); returns the previous one."""
    global _hook
    previous, _hook = _hook, hook
    return previous


@contextmanager
def installed(hook: Hook | None) -> Iterator[None]:
    previous = install(hook)
    try:
        yield
    finally:
        install(previous)


def env_hook(environ: dict[str, str] | None = None) -> Hook | None:
    """The hook the ``FASTALL_TEST_*`` variables describe, or None when none is set.
    ``KILL_AT=name[:n]`` SIGKILLs the process the n-th time it passes ``name``; ``PAUSE_AT`` sleeps there
    (for a test to kill it from outside); ``INTERRUPT_AT=name`` raises KeyboardInterrupt there (a Ctrl-C);
    ``ENOSPC_AT=name`` fails the writes at ``name`` as on a full disk."""
    env = dict(os.environ if environ is None else environ)
    if not any(env.get(k) for k in TEST_ENVS):
        return None
    hits: Counter[str] = Counter()

    def hook(name: str) -> bool:
        if name.startswith("enospc:"):
            return env.get(ENOSPC_ENV) == name.removeprefix("enospc:")
        if env.get(INTERRUPT_ENV) == name:
            raise KeyboardInterrupt
        hits[name] += 1
        for key in (KILL_ENV, PAUSE_ENV):
            point, _, nth = (env.get(key) or "").partition(":")
            if point == name and hits[name] == int(nth or 1):
                if key == KILL_ENV:
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(600)
        return False

    return hook
