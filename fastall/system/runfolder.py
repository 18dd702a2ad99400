"""Output folders that appear complete or not at all: written as ``OUT.tmp-<pid>``, then renamed onto OUT.

A crash, Ctrl-C or full disk leaves no folder at OUT that looks complete. A complete fastall folder at OUT is
refused unless ``overwrite``; a folder holding anything else is never overwritten.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastall.errors import FastallError
from fastall.system.procs import pid_alive

MARKERS = {"metrics.json": "fastall-run", "results.json": "fastall-sweep", "compare.json": "fastall-compare"}


def _fastall_format(folder: Path) -> str | None:
    for name, fmt in MARKERS.items():
        try:
            if json.loads((folder / name).read_text()).get("format") == fmt:
                return fmt
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _remove_stale(out: Path) -> None:
    pattern = re.compile(re.escape(out.name) + r"\.(tmp|old)-(\d+)")
    if not out.parent.is_dir():
        return
    for sibling in out.parent.iterdir():
        m = pattern.fullmatch(sibling.name)
        if m and sibling.is_dir() and not pid_alive(int(m.group(2))):
            shutil.rmtree(sibling, ignore_errors=True)


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse OUT before any work starts: a complete fastall folder (unless ``overwrite``), anything else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FastallError(f"{out}: exists and is not a folder: choose another --out")
    if not any(out.iterdir()):
        return
    fmt = _fastall_format(out)
    if fmt is None:
        raise FastallError(
            f"{out}: exists and is not a fastall run folder: choose another --out (it is never overwritten)"
        )
    if not overwrite:
        raise FastallError(
            f"{out}: a complete {fmt} folder is already there: use --overwrite or another --out"
        )


@contextmanager
def atomic_folder(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces OUT, on any failure it is removed."""
    out = Path(out).absolute()
    check_target(out, overwrite)
    _remove_stale(out)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:
        raise FastallError(f"{out}: cannot create the output folder: {err.strerror or err}") from None
    try:
        yield tmp
        _fsync_tree(tmp)
        _publish(tmp, out, overwrite)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FastallError(f"{out}: cannot write the output folder: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_dir():
            _fsync_tree(path)
            continue
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    check_target(out, overwrite)
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = out.with_name(f"{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        else:
            out.rmdir()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
