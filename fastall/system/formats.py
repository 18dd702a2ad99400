"""The one check of a stored file's kind: its format name, its version and the entries it must hold.

A cache (HDF5 attributes), a head file and an exported model (torch dicts) each declare a
:class:`FileFormat`; their readers hand it what they found and get one clear line when it is not theirs.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastall.errors import FastallError


@dataclass(frozen=True)
class FileFormat:
    """What a file of one kind says about itself. ``name``: its ``format`` value (None where the version
    field alone marks the kind, as in a cache); ``rerun``: how to make a file this fastall reads."""

    noun: str
    name: str | None
    version: int
    required: tuple[str, ...] = ()
    rerun: str = ""
    version_field: str = "format_version"

    def check(
        self,
        path: str | Path,
        found_name: Any,
        found_version: Any,
        present: Container[str] = (),
        error: type[Exception] = FastallError,
    ) -> None:
        """Raise ``error`` naming ``path`` unless the name, the version and every required entry fit."""
        if self.name is not None and found_name != self.name:
            raise error(f"{path}: not a fastall {self.noun} (format {found_name!r}, expected {self.name!r})")
        if found_version is None:
            raise error(f"{path}: not a fastall {self.noun} (no {self.version_field})")
        if found_version != self.version:
            raise error(
                f"{path}: {self.noun} {self.version_field.replace('_', ' ')} {found_version!r}, this fastall "
                f"reads version {self.version}" + (f": {self.rerun}" if self.rerun else "")
            )
        missing = [k for k in self.required if k not in present]
        if missing:
            raise error(f"{path}: not a complete fastall {self.noun}, missing {', '.join(missing)}")

    def check_record(self, path: str | Path, record: Any, error: type[Exception] = FastallError) -> None:
        """:meth:`check` of a stored dict (its ``format``, version field and keys); refuses anything else."""
        if not isinstance(record, dict):
            raise error(f"{path}: not a fastall {self.noun} (a {type(record).__name__}, not a dict)")
        self.check(path, record.get("format"), record.get(self.version_field), record, error)
