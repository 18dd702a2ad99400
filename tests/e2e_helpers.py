"""A tiny trained run for the end-to-end tests, made by the real pipeline (synth -> extract -> train-head).

The run is built once per test session and shared: tests that change it work on a copy (``copy_run``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastall.features.cache import ImageRows, read_cache, write_cache

_BUILT: dict[tuple, E2ERun] = {}


@dataclass(frozen=True)
class E2ERun:
    run: Path
    cache: Path
    data: Path


def build_run(base: Path, *, image_size: int = 32, views: int = 2, testing: bool = False) -> E2ERun:
    from fastall.data.synth import synthesize
    from fastall.features.extract import extract
    from fastall.training.config import HeadConfig, TrainOptions
    from fastall.training.train_head import train_head

    base.mkdir(parents=True, exist_ok=True)
    synthesize(
        base / "data", patients_per_class=3, images_per_patient=3, size=64, prelim=False, testing=testing
    )
    extract(
        base / "data",
        base / "cache.h5",
        views=views,
        image_size=image_size,
        weights="none",
        device="cpu",
        amp=False,
        workers=0,
    )
    options = TrainOptions(folds=3, test="none", device="cpu", progress=False)
    train_head(base / "cache.h5", base / "run", HeadConfig(epochs=3), options)
    return E2ERun(base / "run", base / "cache.h5", base / "data")


def shared_run(tmp_path_factory, **kwargs) -> E2ERun:
    """One run per distinct ``kwargs`` for the whole session (do not modify it: copy it)."""
    key = tuple(sorted(kwargs.items()))
    if key not in _BUILT:
        _BUILT[key] = build_run(tmp_path_factory.mktemp("e2e"), **kwargs)
    return _BUILT[key]


def copy_run(e2e: E2ERun, dest: Path) -> Path:
    """A modifiable copy of the run folder (still pointing at the shared cache)."""
    shutil.copytree(e2e.run, dest)
    return dest


def edit_head(run: Path, **changes) -> None:
    """Rewrite ``run/head.pt`` with some entries replaced."""
    blob = torch.load(run / "head.pt", weights_only=True)
    blob.update(changes)
    torch.save(blob, run / "head.pt")


def cache_with(e2e: E2ERun, dest: Path, stamps: list | None = None, **key_changes) -> Path:
    """A copy of the run's cache whose recorded parameters differ by ``key_changes`` (and whose content
    stamps are ``stamps``, where given)."""
    fc = read_cache(e2e.cache)
    attrs = fc.attrs
    return write_cache(
        dest,
        features=fc.features,
        rows=ImageRows.of(fc, stamps_of(fc) if stamps is None else stamps),
        class_names=fc.class_names,
        view_params=fc.view_params,
        view_param_names=fc.view_param_names,
        key_params={**fc.key_params, **key_changes},
        provenance={"data_root": attrs["data_root"]},
    )


def stamps_of(fc) -> list | None:
    """The cache's content stamps (None for a cache without them), to write the same rows again."""
    from fastall.data.fingerprint import Stamp

    if fc.content_hashes is None:
        return None
    rows = zip(fc.content_hashes, fc.file_sizes, fc.file_mtimes, strict=True)
    return [Stamp(str(h), int(s), int(m)) for h, s, m in rows]


def images_of(e2e: E2ERun, n: int = 4) -> torch.Tensor:
    """``n`` of the run's images, decoded and resized like extract does."""
    from fastall.data.images import decode_image
    from fastall.preprocess import resize_uint8

    fc = read_cache(e2e.cache, load_features=False)
    size = int(fc.key_params["image_size"])
    idx = np.linspace(0, fc.n_images - 1, n).astype(int)
    return torch.stack([resize_uint8(decode_image(e2e.data / fc.paths[i]), size) for i in idx])
