"""What an extract records: the parameters of its cache key, its provenance, and the one cache of its rows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from fastall import __version__
from fastall.data.discover import Record
from fastall.data.fingerprint import Stamp, dataset_fingerprint
from fastall.errors import FastallError
from fastall.features import content
from fastall.features.augment import AUGMENT_CONFIG, VIEW_PARAM_NAMES, parse_fill
from fastall.features.cache import ImageRows, write_cache
from fastall.features.extract_config import ExtractConfig
from fastall.preprocess import IMAGENET_MEAN, IMAGENET_STD

PREPROCESS = "v1: RGB uint8, resize bilinear+antialias (whole image, no crop), /255, [augment], mean/std"


def key_params_for(
    *,
    info: Any,
    image_size: int,
    views: int,
    seed: int,
    amp: bool,
    amp_dtype: str,
    records: list[Record],
    class_names: list[str],
    fill: str = "auto",
    quantization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every parameter that changes the features (and nothing that does not); ``pool``, ``layers`` and
    ``quantization`` (int8) only where set, so that caches from before them keep their keys."""
    extra = {
        "pool": getattr(info, "pool", None),
        "layers": list(getattr(info, "layers", None) or []),
        "quantization": quantization,
    }
    return {
        **{k: v for k, v in extra.items() if v},
        "backbone": info.name,
        "weights": info.weights,
        "weights_sha256": info.sha256,
        "feature_dim": info.feature_dim,
        "image_size": image_size,
        "mean": list(getattr(info, "mean", IMAGENET_MEAN)),
        "std": list(getattr(info, "std", IMAGENET_STD)),
        "preprocess": PREPROCESS,
        "views": views,
        "augment": AUGMENT_CONFIG,
        "fill": parse_fill(fill),
        "seed": seed,
        "amp": amp,
        "amp_dtype": amp_dtype if amp else "fp32",
        "dataset_fingerprint": dataset_fingerprint(records),
        "dataset_images": len(records),
        "dataset_classes": list(class_names),
    }


def provenance(dev: torch.device, info: Any, cfg: ExtractConfig, data: Path) -> dict[str, Any]:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {
        "fastall_version": __version__,
        "torch_version": str(torch.__version__),
        "torchvision_version": str(torchvision.__version__),
        "device": str(dev),
        "device_name": name,
        "batch_size": cfg.batch_size or 0,
        "workers": -1 if cfg.workers is None else cfg.workers,
        "weights_source": info.source,
        **({"transform_vs_timm": info.transform_note} if getattr(info, "transform_note", "") else {}),
        "backbone_params": int(getattr(info, "params", 0)),
        "data_root": str(Path(data).resolve()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_rows(
    out: Path,
    records: list[Record],
    rows: list[int],
    features: np.ndarray | None,
    params: np.ndarray | None,
    bad: dict[int, str],
    stamps: dict[int, Stamp],
    class_names: list[str],
    key_params: dict[str, Any],
    provenance: dict[str, Any],
    maps: Any = None,
) -> None:
    """The one cache of ``rows`` (sorted record indices; ``features``/``params`` in that order; ``stamps``:
    the content stamp each row's file was read with; ``maps``: their maps at the cut, streamed)."""
    if not rows:
        raise FastallError(f"none of the {len(records)} images could be decoded; nothing to cache")
    picked = [records[i] for i in rows]
    skipped = [(records[i].rel_path, bad[i].removeprefix(f"{records[i].path}: ")) for i in sorted(bad)]
    write_cache(
        out,
        features=features,
        rows=ImageRows(
            labels=np.array([r.label for r in picked], dtype=np.int64),
            patients=[r.patient for r in picked],
            paths=[r.rel_path for r in picked],
            sources=[r.source for r in picked],
            stamps=content.row_stamps(stamps, records, rows),
        ),
        class_names=class_names,
        view_params=params,
        view_param_names=list(VIEW_PARAM_NAMES),
        key_params=key_params,
        provenance=provenance,
        skipped=skipped,
        maps=maps,
    )
