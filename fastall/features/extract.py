"""`fastall extract`: frozen backbone features of V views per image into a crash-safe HDF5 cache.

This module decides what to compute (key, existing cache, partial work, lock) and assembles the result; the
device loop is :mod:`fastall.features.loop`, the crash safety :mod:`fastall.features.shards`.
Each finished batch is a
shard beside the target; ``CACHE.h5`` appears only when complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from fastall import __version__
from fastall.data.discover import Record
from fastall.data.fingerprint import Stamp, dataset_fingerprint
from fastall.data.positive import class_attrs
from fastall.errors import CacheError, FastallError
from fastall.features import content
from fastall.features.augment import AUGMENT_CONFIG, VIEW_PARAM_NAMES, parse_fill
from fastall.features.backbone import load_backbone
from fastall.features.cache import cache_key, diff_params, read_cache, write_cache
from fastall.features.inputs import _check_out, _dataset
from fastall.features.loop import run
from fastall.features.shards import PartialStore, cache_lock, claim_layout, partial_folder
from fastall.features.summary import ExtractSummary
from fastall.preprocess import IMAGENET_MEAN, IMAGENET_STD
from fastall.system.devices import decide_precision, precision_alias, resolve_device
from fastall.system.files import kill_point
from fastall.system.seeds import check_seed
from fastall.viewparams import describe_fills

PREPROCESS = "v1: RGB uint8, resize bilinear+antialias (whole image, no crop), /255, [augment], mean/std"
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
EXTRACT_PRECISIONS = ("fp32", "bf16", "fp16")


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
) -> dict[str, Any]:
    """Every parameter that changes the features (and nothing that does not); ``pool`` and ``layers`` only
    where set, so that caches from before them keep their keys."""
    extra = {"pool": getattr(info, "pool", None), "layers": list(getattr(info, "layers", None) or [])}
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


def _check_args(
    views: int, image_size: int, seed: int, batch_size: int | None, workers: int | None, amp_dtype: str | None
) -> None:
    check_seed(seed)
    checks = [
        (views < 1, f"--views must be at least 1, got {views}"),
        (not 32 <= image_size <= 2048, f"--image-size must be 32..2048, got {image_size}"),
        (batch_size is not None and batch_size < 1, f"--batch-size must be >= 1, got {batch_size}"),
        ((workers or 0) < 0, f"--workers must be non-negative, got {workers}"),
        (
            amp_dtype is not None and amp_dtype not in AMP_DTYPES,
            f"--amp-dtype must be bf16 or fp16, got {amp_dtype!r}",
        ),
    ]
    problems = [message for failed, message in checks if failed]
    if problems:
        raise FastallError("; ".join(problems))


def _existing_matches(out: Path, key_params: dict[str, Any], overwrite: bool) -> bool:
    """True when a complete cache with this key exists; refuse another key unless ``overwrite``."""
    if not out.exists():
        return False
    try:
        old = read_cache(out, load_features=False)
    except CacheError as err:
        if overwrite:
            return False
        raise CacheError(
            f"{out} exists but is not a valid cache ({str(err).removeprefix(str(out) + ': ')}); "
            "use --overwrite to replace it"
        ) from None
    if cache_key(content.run_params(old.key_params)) == cache_key(key_params):
        return True
    if not overwrite:
        diffs = "; ".join(diff_params(old.key_params, key_params))
        raise CacheError(
            f"{out} was made with other settings (cache -> now): {diffs}; use --overwrite to replace it"
        )
    return False


def _open_partial(store: PartialStore, key_params: dict[str, Any], overwrite: bool, warn: Callable) -> None:
    meta = store.meta()
    if meta is not None and meta.get("key") != cache_key(key_params):
        if not meta:
            warn(f"{store.dir}: unreadable progress metadata, starting over")
        elif not overwrite:
            raise CacheError(
                f"{store.dir} holds an unfinished extract with other settings (partial -> now): "
                + "; ".join(diff_params(meta.get("key_params", {}), key_params))
                + "; use --overwrite to discard it"
            )
        store.remove()
        meta = None
    if meta is None:
        store.start(cache_key(key_params), key_params)


def extract(
    data: str | Path,
    out: str | Path,
    *,
    views: int = 8,
    image_size: int | None = None,
    weights: str | None = None,
    backbone: str = "resnet50",
    pool: str | None = None,
    layers: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    amp: bool | None = None,
    amp_dtype: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    seed: int = 0,
    fill: str = "auto",
    include: Iterable[str] = (),
    overwrite: bool = False,
    skip_bad: bool = False,
    patient_regex: str | None = None,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
    scratch: str | Path | None = None,
    update: bool = False,
    verify_content: bool = False,
    patients: str | Path | None = None,
    positive: str | None = None,
) -> ExtractSummary:
    """Compute (or resume, or find already done) the feature cache of ``data`` at ``out``.

    ``precision``: auto (bf16 where the device computes it natively, else fp32), fp32, bf16 or fp16;
    ``amp``/``amp_dtype`` are its older aliases. The precision used is in the cache key. ``fill``
    (:data:`fastall.features.augment.FILL_FORMS`) fills the corners that rotation and zoom uncover.
    Images whose file changed since their features were computed are refused, or recomputed with
    ``update`` (:mod:`fastall.features.content`); ``verify_content`` hashes every file, not only those
    whose size or mtime changed. ``patients``: a ``path,patient`` CSV; ``positive``: the disease class.
    ``backbone``, ``weights``, ``pool`` (a timm ViT's token pooling), ``layers`` (a CNN's stages): as
    :func:`~fastall.features.backbone.load_backbone`; ``image_size``: None for the weights' own.
    """
    start = time.perf_counter()
    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        if warn is not None:
            warn(message)

    _check_args(views, 224 if image_size is None else image_size, seed, batch_size, workers, amp_dtype)
    fill = parse_fill(fill)
    dev = resolve_device(device)
    choice = decide_precision(precision_alias(precision, amp, amp_dtype), dev, allowed=EXTRACT_PRECISIONS)
    if not choice.native:
        note(f"{choice.reason} (--precision auto picks fp32 here)")
    out = Path(out)
    _check_out(out, scratch)
    ds = _dataset(data, include, patient_regex, note, patients)
    classes, positive_line = class_attrs(ds.class_names, ds.layout, positive)
    records = ds.records
    content.views_warning(views, len(records), note)
    with cache_lock(out, warn=note):
        model, info = load_backbone(
            weights, seed=seed, backbone=backbone, pool=pool, layers=layers, image_size=image_size
        )
        image_size = info.input_size(image_size)
        for message in info.warnings:
            note(message)
        key_params = key_params_for(
            info=info,
            image_size=image_size,
            views=views,
            seed=seed,
            amp=choice.precision != "fp32",
            amp_dtype=choice.precision,
            records=records,
            class_names=ds.class_names,
            fill=fill,
        )
        compute = key_params["amp_dtype"]
        summary = ExtractSummary(
            path=out,
            images=len(records),
            views=views,
            seconds=0.0,
            device=str(dev),
            amp_dtype=compute,
            key=cache_key(key_params),
            fill=fill,
            warnings=warnings,
            precision=choice.to_dict(),
            positive=positive_line,
        )
        store = PartialStore(out, partial_folder(out, scratch))
        changed: list[int] = []
        if _existing_matches(out, key_params, overwrite):
            old = read_cache(out, load_features=False)
            check = dict(verify=verify_content, update=update or overwrite, note=note)
            changed = content.check_cache(out, old, records, **check)
            if not changed:
                if store.meta() is not None and store.meta().get("key") == summary.key:
                    store.remove()
                summary.images, summary.skipped, summary.skipped_existing = old.n_images, old.skipped, True
                summary.fills = describe_fills(old.view_params)
                summary.cache_bytes, summary.seconds = out.stat().st_size, time.perf_counter() - start
                return summary
            store.remove()
        claim_layout(store.dir, 1, overwrite)
        _open_partial(store, key_params, overwrite, note)
        if changed and not overwrite:
            content.seed_update(store, out, records, changed, note)
        done, bad = store.load(len(records), views, info.feature_dim, warn=note)
        check = dict(verify=verify_content, update=update, note=note)
        if content.check_partial(store, records, list(done), **check):
            done, bad = store.load(len(records), views, info.feature_dim, warn=note)
        todo = [i for i in range(len(records)) if i not in done and i not in bad]
        summary.resumed = len(done)
        if done or bad:
            note(f"resuming: {len(done)} images already done in {store.dir}, {len(todo)} to go")
        loop_start, used = time.perf_counter(), batch_size
        if todo:
            used = run(
                model,
                records,
                todo,
                store,
                dev=dev,
                size=image_size,
                views=views,
                dim=info.feature_dim,
                norm=(info.mean, info.std),
                seed=seed,
                fill=fill,
                amp=choice.autocast_dtype,
                batch_size=batch_size,
                workers=workers,
                skip_bad=skip_bad,
                progress=progress,
            )
        summary.loop_seconds = time.perf_counter() - loop_start
        kill_point("finalize")
        provenance = {**_provenance(dev, info, batch_size, workers, data), **choice.record(), **classes}
        if used and not batch_size:
            provenance["batch_size_auto"] = used
        if todo:
            provenance["extract_s_per_image"] = summary.loop_seconds / len(todo)
        _finalize(store, out, records, ds.class_names, views, info.feature_dim, key_params, provenance)
        kill_point("cleanup")
        store.remove()
    final = read_cache(out, load_features=False)
    summary.key = final.key
    for message in content.duplicate_warnings(final):
        note(message)
    summary.images, summary.skipped = final.n_images, final.skipped
    summary.fills = describe_fills(final.view_params)
    summary.computed = final.n_images - summary.resumed
    summary.cache_bytes, summary.seconds = out.stat().st_size, time.perf_counter() - start
    return summary


def _provenance(
    dev: torch.device, info: Any, batch_size: int | None, workers: int | None, data: str | Path
) -> dict[str, Any]:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {
        "fastall_version": __version__,
        "torch_version": str(torch.__version__),
        "torchvision_version": str(torchvision.__version__),
        "device": str(dev),
        "device_name": name,
        "batch_size": batch_size or 0,
        "workers": -1 if workers is None else workers,
        "weights_source": info.source,
        **({"transform_vs_timm": info.transform_note} if getattr(info, "transform_note", "") else {}),
        "backbone_params": int(getattr(info, "params", 0)),
        "data_root": str(Path(data).resolve()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _finalize(
    store: PartialStore,
    out: Path,
    records: list[Record],
    class_names: list[str],
    views: int,
    dim: int,
    key_params: dict[str, Any],
    provenance: dict[str, Any],
) -> None:
    done, bad = store.load(len(records), views, dim)
    missing = [i for i in range(len(records)) if i not in done and i not in bad]
    if missing:
        raise CacheError(f"{store.dir}: {len(missing)} images still missing after the run; run extract again")
    rows = sorted(done)
    features = np.stack([done[i][0] for i in rows]) if rows else None
    params = np.stack([done[i][1] for i in rows]) if rows else None
    _write(out, records, rows, features, params, bad, store.stamps(), class_names, key_params, provenance)


def _write(
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
) -> None:
    """The one cache of ``rows`` (sorted record indices; ``features``/``params`` in that order; ``stamps``:
    the content stamp each row's file was read with)."""
    if not rows:
        raise FastallError(f"none of the {len(records)} images could be decoded; nothing to cache")
    picked = [records[i] for i in rows]
    skipped = [(records[i].rel_path, bad[i].removeprefix(f"{records[i].path}: ")) for i in sorted(bad)]
    write_cache(
        out,
        features=features,
        labels=np.array([r.label for r in picked], dtype=np.int64),
        class_names=class_names,
        patients=[r.patient for r in picked],
        paths=[r.rel_path for r in picked],
        sources=[r.source for r in picked],
        view_params=params,
        view_param_names=list(VIEW_PARAM_NAMES),
        key_params=key_params,
        provenance=provenance,
        skipped=skipped,
        stamps=content.row_stamps(stamps, records, rows),
    )
