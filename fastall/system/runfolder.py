"""Output folders that appear complete or not at all: written as ``OUT.tmp-<pid>``, then renamed onto OUT.

A crash, Ctrl-C or full disk leaves no folder at OUT that looks complete. A complete fastall folder at OUT is
refused unless ``overwrite``; a folder holding anything else is never overwritten.

Replacing a complete OUT takes two renames (OUT -> ``OUT.old-<pid>``, tmp -> OUT). A crash between them leaves
no OUT; the next run puts the previous complete folder back before anything else, so a rerun never deletes
the only complete copy. Stale ``OUT.old-<pid>`` folders are deleted only while OUT itself is complete.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastall.errors import FastallError
from fastall.system import faults
from fastall.system.files import (
    describe_write_error,
    fsync_dir,
    fsync_tree,
    is_disk_full,
    open_regular,
)
from fastall.system.procs import pid_alive

MARKERS = {
    "metrics.json": "fastall-run",
    "results.json": "fastall-sweep",
    "explain.json": "fastall-explain",
    "compare.json": "fastall-compare",
    "probe.json": "fastall-probe",
    "evaluation.json": "fastall-evaluation",
}


def _fastall_format(folder: Path) -> str | None:
    for name, fmt in MARKERS.items():
        try:
            if json.loads((folder / name).read_text()).get("format") == fmt:
                return fmt
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _stale(out: Path, kind: str) -> list[Path]:
    """``OUT.<kind>-<pid>`` folders of processes that are gone."""
    pattern = re.compile(re.escape(out.name) + rf"\.{kind}-(\d+)")
    if not out.parent.is_dir():
        return []
    return [
        sibling
        for sibling in out.parent.iterdir()
        if (m := pattern.fullmatch(sibling.name))
        and sibling.is_dir()
        and int(m.group(1)) != os.getpid()
        and not pid_alive(int(m.group(1)))
    ]


def recover(out: str | Path) -> bool:
    """Undo a publish cut short between its two renames: with OUT gone, put the newest complete
    ``OUT.old-<pid>`` of a dead process back at OUT. True if it did."""
    out = Path(out).absolute()
    try:
        if out.exists() or out.is_symlink():
            return False
        complete = [old for old in _stale(out, "old") if _fastall_format(old)]
        if not complete:
            return False
        os.replace(max(complete, key=lambda p: p.stat().st_mtime_ns), out)
        fsync_dir(out.parent)
    except OSError:
        return False
    return True


def _remove_stale(out: Path) -> None:
    for tmp in _stale(out, "tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    if _fastall_format(out):
        for old in _stale(out, "old"):
            shutil.rmtree(old, ignore_errors=True)


def check_target(out: Path, overwrite: bool, kind: str | None = None) -> None:
    """Refuse OUT before any work starts: a complete fastall folder (unless ``overwrite``; never one of
    another ``kind``, such as a train-head run under a sweep), anything else.

    A previous complete folder left beside a missing OUT by a crash is put back first (:func:`recover`), and
    what dead processes left beside it is swept.
    """
    recover(out)
    _remove_stale(Path(out).absolute())
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
    if kind is not None and fmt != kind:
        raise FastallError(
            f"{out}: holds a {fmt} folder, not a {kind} one: --overwrite replaces only a folder of the same "
            "kind; choose another --out"
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
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:
        raise FastallError(f"{out}: cannot create the output folder: {err.strerror or err}") from err
    try:
        yield tmp
        faults.reached("run-folder")
        if faults.disk_full("run-folder"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync_tree(tmp)
        _publish(tmp, out, overwrite)
    except (OSError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not is_disk_full(err, out.parent):
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        reason = describe_write_error(err, out.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        raise FastallError(f"{out}: cannot write the output folder: {reason}") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename ``tmp`` onto OUT; a complete OUT is first moved aside to ``OUT.old-<pid>`` (see the module).
    A complete OUT of another kind than ``tmp`` (a run under a sweep) is never replaced."""
    check_target(out, overwrite, _fastall_format(tmp))
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(tmp, out)
        fsync_dir(out.parent)
        return
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    fsync_dir(out.parent)
    faults.reached("publish-old")
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    fsync_dir(out.parent)
    faults.reached("publish-new")
    shutil.rmtree(old, ignore_errors=True)


_SIGNATURES = {b"\x89HDF\r\n\x1a\n": "an HDF5 file (a feature cache?)"}


def check_output_file(out: str | Path, inputs: list[str | Path], *, text: bool = False) -> Path:
    """Refuse, before any work, an output file that would replace an input, a file inside a fastall folder
    (a run's own head.pt or metrics.json: those folders change only as a whole), or an HDF5 cache; with
    ``text`` (a CSV) any existing file holding binary data too."""
    out = Path(out)
    real = Path(os.path.realpath(out))  # never raises on a loop
    for raw in inputs:
        if real == Path(os.path.realpath(raw)):
            raise FastallError(f"--out {out}: is one of the inputs; write elsewhere")
    for folder in real.parents:
        fmt = _fastall_format(folder)
        if fmt is not None:
            raise FastallError(
                f"--out {out}: lies inside the {fmt} folder {folder}, whose files are never replaced one by "
                "one; write elsewhere"
            )
    if not real.is_file():
        return out
    try:
        with open_regular(real) as fh:
            head = fh.read(8192)
    except OSError:
        return out
    for signature, what in _SIGNATURES.items():
        if head.startswith(signature):
            raise FastallError(f"--out {out}: is {what}; it is never overwritten: write elsewhere")
    if text and b"\0" in head:
        raise FastallError(
            f"--out {out}: holds binary data, not a CSV; it is never overwritten: write elsewhere"
        )
    return out
