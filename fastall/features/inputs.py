"""What extract starts from: the discovered dataset (fatal problems raise, the rest are warnings) and a usable
output path."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fastall.data.discover import discover
from fastall.errors import FastallError


def discover_dataset(
    data: str | Path,
    include: Iterable[str],
    patient_regex: str | None,
    warn: Callable,
    patients: str | Path | None = None,
) -> Any:
    """The discovered dataset; fatal problems raise, the others are passed to ``warn``."""
    extra = {"include": tuple(include)} if tuple(include) else {}
    ds = discover(data, patient_regex=patient_regex, patients=patients, **extra)
    fatal = ds.fatal_problems
    if fatal:
        first = "; ".join(str(p) for p in fatal[:3])
        raise FastallError(
            f"{len(fatal)} fatal problem(s) in {ds.root}: {first}"
            f"{' ...' if len(fatal) > 3 else ''} (`fastall scan {ds.root}` lists them all)"
        )
    ds.check(training=False)
    for message in ds.warnings + [str(p) for p in ds.problems]:
        warn(message)
    return ds


def check_out(out: Path, scratch: str | Path | None) -> None:
    if out.is_dir():
        raise FastallError(f"--out {out} is a folder; give a file name such as {out / 'features.h5'}")
    if not out.parent.is_dir():
        raise FastallError(f"--out {out}: folder {out.parent} does not exist")
    if scratch is not None and not Path(scratch).is_dir():
        raise FastallError(f"--scratch {scratch}: no such folder")
