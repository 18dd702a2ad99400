"""Fingerprints: of a dataset (``dataset_fingerprint``, which every cache records, so that a run's images can
be recognised again wherever they have moved) and of each image file's content.

A file's content hash is ``xxh3_128`` (the ``xxhash`` package: tens of GB/s, far below the cost of decoding)
or, where xxhash is not installed, ``blake2b-128`` from hashlib (about 100x slower, still a fraction of a
decode). A *stamp* is ``(hash, size, mtime_ns)``: the size and mtime are the cheap first check, the hash
settles it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastall.data.records import Record
from fastall.system.files import open_regular

try:
    import xxhash

    ALGORITHM = "xxh3_128"
    _new: Callable = xxhash.xxh3_128
except ImportError:  # pragma: no cover - xxhash is a core dependency
    ALGORITHM = "blake2b-128"

    def _new(data: bytes = b""):
        return hashlib.blake2b(data, digest_size=16)


CHUNK = 1 << 20
_MASK = (1 << 64) - 1


def dataset_fingerprint(records: list[Record]) -> str:
    """sha256 over (relative path, label, patient, source, file size) of every record, in discovery order."""
    h = hashlib.sha256()
    for r in records:
        try:
            size = os.stat(r.path).st_size
        except OSError:
            size = -1
        h.update(json.dumps([r.rel_path, r.label, r.patient, r.source, size]).encode())
    return h.hexdigest()


def hash_bytes(data: bytes) -> str:
    """The 32-hex-digit content hash of ``data``."""
    return _new(data).hexdigest()


def hash_file(path: str | Path) -> str:
    """The content hash of a regular file, read in 1 MiB chunks (``OSError`` for a FIFO or device)."""
    h = _new()
    with open_regular(path) as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Stamp:
    """What a file was when it was read: content hash, size in bytes, mtime in ns."""

    hash: str
    size: int
    mtime_ns: int

    def as_ints(self) -> list[int]:
        """Four int64 (the hash's two halves as signed, size, mtime): a tensor row for DataLoader workers."""
        value = int(self.hash, 16) if self.hash else 0
        halves = np.array([value >> 64, value & _MASK], dtype=np.uint64).view(np.int64)
        return [int(halves[0]), int(halves[1]), self.size, self.mtime_ns]

    @classmethod
    def from_ints(cls, row: np.ndarray | list[int]) -> Stamp:
        hi, lo = (int(v) for v in np.asarray(row[:2], dtype=np.int64).view(np.uint64))
        value = (hi << 64) | lo
        return cls(f"{value:032x}" if value else "", int(row[2]), int(row[3]))


def stamp_of(data: bytes, st: os.stat_result) -> Stamp:
    return Stamp(hash_bytes(data), int(st.st_size), int(st.st_mtime_ns))


EMPTY = Stamp("", -1, -1)
