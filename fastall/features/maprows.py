"""The maps dataset of a maps store, as the one cache writer (:func:`~fastall.features.cache.write_cache`)
writes it: fp16 ``[N, M, C, H, W]``, one chunk per image and view, filled row by row (streamed)."""

from __future__ import annotations

from typing import Any, Protocol

import h5py
import numpy as np


class MapRows(Protocol):
    """The maps to store: ``shape`` ``(N, M, C, H, W)`` and ``rows()``, the fp16 ``[M, C, H, W]`` of each row
    in order (streamed: never all in memory)."""

    shape: tuple[int, ...]

    def rows(self) -> Any: ...


def write_maps(f: h5py.File, maps: MapRows) -> None:
    """Create and fill the ``maps`` dataset of an open cache file."""
    shape = tuple(int(v) for v in maps.shape)
    chunks = (1, 1, *shape[2:]) if shape[0] and shape[1] else None
    ds = f.create_dataset("maps", shape=shape, dtype=np.float16, chunks=chunks)
    for i, row in enumerate(maps.rows()):
        ds[i] = np.asarray(row, dtype=np.float16)
