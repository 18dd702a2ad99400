"""The maps of an unfinished `extract --maps`: one file per image in ``TARGET.partial/maps/``.

An image's map file (fp16 ``[M, C, H, W]``, written atomically) is saved before the batch shard that marks
the image done, so a kill at any moment leaves every done image with its map; a done image whose map file is
missing or wrong is recomputed. The final store streams them in row order (:class:`ShardMaps`), so memory
holds one image's maps at a time. :func:`plan_maps` sizes the maps and refuses a disk without room.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from fastall.errors import CacheError
from fastall.features.cut import map_bytes
from fastall.system import faults
from fastall.system.files import atomic_write, check_free_space, describe_write_error, free_bytes

MAPS_DIR = "maps"


def map_file(partial: Path, index: int) -> Path:
    return partial / MAPS_DIR / f"{int(index):09d}.npy"


def save_maps(partial: Path, indices: Sequence[int], maps: np.ndarray) -> None:
    """Save each image's maps (before its batch shard is written)."""
    (partial / MAPS_DIR).mkdir(parents=True, exist_ok=True)
    for i, m in zip(indices, maps, strict=True):
        blob = np.ascontiguousarray(m, dtype=np.float16)
        try:
            atomic_write(map_file(partial, i), lambda fh, b=blob: np.save(fh, b), point="maps-tmp")
        except OSError as err:
            raise CacheError(f"{partial}: cannot save maps: {describe_write_error(err, partial)}") from None
    faults.reached("maps-shard")


def missing_maps(partial: Path, indices: Sequence[int], shape: Sequence[int]) -> set[int]:
    """The done images whose map file is missing, unreadable or of another shape than ``shape``."""
    bad = set()
    for i in indices:
        try:
            m = np.load(map_file(partial, i), mmap_mode="r", allow_pickle=False)
            if m.shape != tuple(shape) or m.dtype != np.float16:
                bad.add(int(i))
        except (OSError, ValueError, EOFError):
            bad.add(int(i))
    return bad


class ShardMaps:
    """The maps of ``rows`` (record indices, in the store's row order), streamed for the cache writer."""

    def __init__(self, partial: Path, rows: Sequence[int], shape: Sequence[int]) -> None:
        self.partial, self.order = partial, list(rows)
        self.shape = (len(self.order), *shape)

    def rows(self) -> Iterator[np.ndarray]:
        for i in self.order:
            yield np.load(map_file(self.partial, i), allow_pickle=False)


def plan_maps(out: Path, partial: Path, images: int, map_views: int, shape: Sequence[int]) -> tuple[int, str]:
    """``(bytes, line)``: the maps' size and the line extract prints before it starts; a disk without room
    for them (the partial files and the final store both hold them while it finishes) is a one-line
    CacheError."""
    size = map_bytes(images, map_views, shape)
    c, h, w = shape
    line = (
        f"maps: {images:,} images x {map_views} views x {c}x{h}x{w} fp16 = {_size(size)} in "
        f"{out} (and as much in {partial} while it runs)"
    )
    same = free_bytes(out.parent) == free_bytes(partial.parent) if partial.parent.exists() else True
    try:
        if same:
            check_free_space(out.parent, 2 * size)
        else:
            check_free_space(out.parent, size)
            check_free_space(partial.parent, size)
    except OSError as err:
        raise CacheError(
            f"{out}: no room for the maps ({_size(size)}, twice while extract runs): "
            f"{err.strerror}; free space, use --map-views 1 or a smaller --image-size, or --scratch DIR"
        ) from None
    return size, line


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
