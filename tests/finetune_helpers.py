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
    "precision": "fp32",
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


def store_from_cache(cache_path: Path, out: Path, layer: str = "layer3", map_views: int = 3) -> Path:
    """`extract --maps` of the plain cache's data, with its settings (the plain cache stays beside it)."""
    from fastall.features.cache import read_cache
    from tests.extract_helpers import run_extract

    cache = read_cache(cache_path, load_features=False)
    kp = cache.key_params
    settings = {**FT, "views": kp["views"], "image_size": kp["image_size"], "backbone": kp["backbone"]}
    run_extract(Path(cache.attrs["data_root"]), out, **settings, maps=layer, map_views=map_views)
    return out
