"""The maps of a cache made with `extract --maps LAYER`: validated, and streamed row by row, never read whole.

A maps store is a feature cache (:mod:`fastall.features.cache`, whose reader validates it first) with one more
dataset, ``maps`` float16 ``[N, M, C, H, W]`` chunked one image and view per chunk, and ``maps`` (the cut,
e.g. ``layer3``), ``map_views`` (M) and ``map_shape`` (``[C, H, W]``) in its key parameters.
:meth:`MapStore.batches` reads the batches of an epoch in a background thread (h5py reads while torch
computes), so memory holds a few batches whatever the store's size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from fastall.errors import CacheError
from fastall.features.cache import FeatureCache, read_cache

PREFETCH = 3


def maps_hint(path: Path | str) -> str:
    return (
        f"{path}: this cache holds no activation maps: make a maps store with "
        f"`fastall extract DATA --out maps.h5 --maps layer3` (a plain ResNet backbone)"
    )


@dataclass
class MapStore:
    """A validated maps store: its cache (pooled features not loaded unless asked) and the maps' layout."""

    path: Path
    cache: FeatureCache
    layer: str
    map_views: int
    shape: tuple[int, int, int]

    @property
    def backbone(self) -> str:
        return self.cache.backbone

    def read(self, rows: Sequence[int], views: Sequence[int], handle: h5py.File | None = None) -> np.ndarray:
        """fp16 ``[len(rows), C, H, W]``: the map of view ``views[j]`` of row ``rows[j]``."""
        own = handle is None
        f = h5py.File(self.path, "r") if own else handle
        try:
            ds = f["maps"]
            out = np.empty((len(rows), *self.shape), dtype=np.float16)
            for j, (i, v) in enumerate(zip(rows, views, strict=True)):
                ds.read_direct(out, np.s_[int(i), int(v)], np.s_[j])
        finally:
            if own:
                f.close()
        bad = ~np.isfinite(out.reshape(len(rows), -1)).all(axis=1) if out.size else np.zeros(0, bool)
        if bad.any():
            first = self.cache.paths[int(rows[int(np.flatnonzero(bad)[0])])]
            raise CacheError(f"{self.path}: the stored map of {first} holds NaN/Inf (file was altered?)")
        return out

    def batches(
        self, plan: Sequence[tuple[np.ndarray, np.ndarray]], prefetch: int = PREFETCH
    ) -> Iterator[torch.Tensor]:
        """The maps of each ``(rows, views)`` in ``plan``, as fp16 tensors, read ahead by a thread."""
        q: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
        stop = threading.Event()

        def reader() -> None:
            try:
                with h5py.File(self.path, "r") as f:
                    for rows, views in plan:
                        if stop.is_set():
                            return
                        q.put(torch.from_numpy(self.read(rows, views, f)))
                q.put(None)
            except BaseException as err:  # handed to the consumer, raised there
                q.put(err)

        thread = threading.Thread(target=reader, daemon=True, name="fastall-maps")
        thread.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(0.05)


def open_maps(path: str | Path, *, load_features: bool = False) -> MapStore:
    """Validate the cache (:func:`~fastall.features.cache.read_cache`) and its maps; a cache without maps
    is refused with one line saying how to make a store."""
    cache = read_cache(path, load_features=load_features)
    kp = cache.key_params
    if not kp.get("maps"):
        raise CacheError(maps_hint(cache.path))
    layer, m = str(kp["maps"]), int(kp.get("map_views", 0))
    shape = tuple(int(v) for v in kp.get("map_shape") or ())
    try:
        with h5py.File(cache.path, "r") as f:
            if "maps" not in f:
                raise CacheError(f"{cache.path}: records maps at {layer} but holds no 'maps' dataset")
            ds = f["maps"]
            expected = (cache.n_images, m, *shape)
            if ds.dtype != np.float16 or ds.shape != expected or len(shape) != 3:
                raise CacheError(
                    f"{cache.path}: maps dataset {ds.dtype} {ds.shape}, expected float16 {expected}"
                )
    except OSError as err:
        raise CacheError(f"{cache.path}: cannot read the maps: {err}") from None
    if not 1 <= m <= cache.n_views:
        raise CacheError(f"{cache.path}: map_views {m} outside 1..{cache.n_views} (the pooled views)")
    return MapStore(cache.path, cache, layer, m, shape)  # type: ignore[arg-type]
