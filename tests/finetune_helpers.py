"""Shared by the finetune tests: a tiny maps store (resnet18, random init, 64 px)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fastall.data.loader import decode_resized
from fastall.features.cut import recorded_cut
from fastall.features.maps import MapStore, open_maps

FT = {
    "views": 3,
    "image_size": 64,
    "weights": "none",
    "backbone": "resnet18",
    "device": "cpu",
    "progress": False,
}


def pixels(store: MapStore, rows) -> torch.Tensor:
    root = Path(store.cache.attrs["data_root"])
    size = int(store.cache.key_params["image_size"])
    return torch.stack([decode_resized(root / store.cache.paths[int(i)], size) for i in rows])


def source_paths(store: MapStore) -> list[Path]:
    root = Path(store.cache.attrs["data_root"])
    return [root / p for p in store.cache.paths]


def norm(store: MapStore):
    kp = store.cache.key_params
    return tuple(kp["mean"]), tuple(kp["std"])


def cut_of(store: MapStore):
    return recorded_cut(store.cache.key_params, store.cache.attrs)


def labels_of(store: MapStore) -> np.ndarray:
    return store.cache.labels


__all__ = ["FT", "open_maps", "pixels", "source_paths", "norm", "cut_of", "labels_of"]


class _Rows:
    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.shape = (len(arrays), *arrays[0].shape)

    def rows(self):
        yield from self.arrays


def store_from_cache(cache_path: Path, out: Path, layer: str = "layer3", map_views: int = 3) -> Path:
    """A maps store made from a plain cache and its images (the maps a `extract --maps` computes)."""
    from fastall.features.cache import read_cache, write_cache
    from fastall.features.cut import map_shape, view_maps

    cache = read_cache(cache_path)
    kp = {k: v for k, v in cache.key_params.items() if k != "content_fingerprint"}
    cut = recorded_cut({**kp, "maps": layer}, cache.attrs)
    size = int(kp["image_size"])
    shape = map_shape(cut, size)
    root = Path(cache.attrs["data_root"])
    images = torch.stack([decode_resized(root / p, size) for p in cache.paths])
    params = torch.from_numpy(cache.view_params)
    maps = view_maps(cut.front, images, params, size, map_views, (kp["mean"], kp["std"])).numpy()
    stamps = None
    write_cache(
        out,
        features=cache.features,
        labels=cache.labels,
        class_names=cache.class_names,
        patients=list(cache.patients),
        paths=list(cache.paths),
        sources=list(cache.sources),
        view_params=cache.view_params,
        view_param_names=cache.view_param_names,
        key_params={**kp, "maps": layer, "map_views": map_views, "map_shape": list(shape)},
        provenance={"data_root": str(root)},
        stamps=stamps,
        maps=_Rows(list(maps)),
    )
    return out
