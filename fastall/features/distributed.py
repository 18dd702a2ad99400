"""`fastall extract` under torchrun: every rank extracts a strided share into its own shard store, then rank 0
checks the whole and writes the one cache, bit for bit what a single process writes.

Shards: ``CACHE.h5.partial/rank-R-of-W/`` beside the cache, or the same under ``--scratch DIR`` (node-local);
either way the finished arrays reach rank 0 through the process group, so rank 0 never reads another rank's
disk. A rerun with the same number of processes resumes every rank from its shards; another number is
refused (``--overwrite`` discards the old work).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fastall.data.fingerprint import Stamp
from fastall.data.positive import class_attrs
from fastall.errors import CacheError, FastallError
from fastall.features import content
from fastall.features.augment import VIEW_PARAM_NAMES, parse_fill
from fastall.features.backbone import load_backbone
from fastall.features.cache import cache_key, diff_params, read_cache
from fastall.features.extract import (
    EXTRACT_PRECISIONS,
    _check_args,
    _check_out,
    _dataset,
    _existing_matches,
    _open_partial,
    _provenance,
    _write,
    key_params_for,
)
from fastall.features.loop import run
from fastall.features.shards import PartialStore, cache_lock, claim_layout, partial_folder, rank_folder
from fastall.features.summary import ExtractSummary
from fastall.system.devices import decide_precision, precision_alias, resolve_device
from fastall.system.distributed import DEFAULT_TIMEOUT, DistEnv, Group, rank_device, share
from fastall.system.files import kill_point


def extract_distributed(
    data: str | Path,
    out: str | Path,
    *,
    env: DistEnv,
    timeout: float = DEFAULT_TIMEOUT,
    scratch: str | Path | None = None,
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
    patients: str | Path | None = None,
    positive: str | None = None,
) -> ExtractSummary:
    """This rank's part of a torchrun extract (call it on every rank); rank 0's summary is the cache's."""
    start = time.perf_counter()
    warnings: list[str] = []

    def note(message: str, everywhere: bool = False) -> None:
        warnings.append(message)
        if warn is not None and (env.is_main or everywhere):
            warn(message if env.is_main else f"rank {env.rank}: {message}")

    _check_args(views, 224 if image_size is None else image_size, seed, batch_size, workers, amp_dtype)
    fill = parse_fill(fill)
    dev = resolve_device(rank_device(device, env))
    choice = decide_precision(precision_alias(precision, amp, amp_dtype), dev, allowed=EXTRACT_PRECISIONS)
    out = Path(out)
    if env.is_main or scratch is None:  # with --scratch, only rank 0 needs --out's folder
        _check_out(out, scratch)
    elif not Path(scratch).is_dir():
        raise FastallError(f"--scratch {scratch}: no such folder")
    if workers is None and dev.type == "cuda":
        workers = env.workers(max(1, (os.cpu_count() or 1) - 2))  # loop.run's default, shared by the ranks
    base = partial_folder(out, scratch)
    store = PartialStore(out, rank_folder(base, env.rank, env.world))
    with contextlib.ExitStack() as stack, Group(env, dev, timeout) as group:
        try:
            ds = _dataset(data, include, patient_regex, note, patients)
            classes, _ = class_attrs(ds.class_names, ds.layout, positive)
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
                records=ds.records,
                class_names=ds.class_names,
                fill=fill,
            )
            existing = False
            if env.is_main:
                stack.enter_context(cache_lock(out, warn=note))
                existing = _existing_matches(out, key_params, overwrite)
                if existing:  # a changed image is refused (--update runs without torchrun)
                    old = read_cache(out, load_features=False)
                    content.check_cache(out, old, ds.records, verify=False, update=False, note=note)
            state: dict[str, Any] = {"error": None, "key_params": key_params, "existing": existing}
        except FastallError as err:
            state = {"error": str(err)}
        states = group.all_gather(state)
        _agree(states, env.rank)
        key, records, dim = cache_key(key_params), ds.records, info.feature_dim
        summary = ExtractSummary(
            path=out,
            images=len(records),
            views=views,
            seconds=0.0,
            device=f"{dev.type} x {env.world} ranks",
            amp_dtype=key_params["amp_dtype"],
            key=key,
            warnings=warnings,
        )
        if states[0]["existing"]:
            if (store.meta() or {}).get("key") == key:
                store.remove()
            if env.is_main:
                old = read_cache(out, load_features=False)
                summary.images, summary.skipped, summary.skipped_existing = old.n_images, old.skipped, True
                summary.cache_bytes = out.stat().st_size
        else:
            mine = share(len(records), env.rank, env.world)
            try:
                claim_layout(base, env.world, overwrite)
                _open_partial(store, key_params, overwrite, lambda m: note(m, True))
                done, bad = store.load(len(records), views, dim, warn=lambda m: note(m, True))
                content.check_partial(store, records, list(done), verify=False, update=False, note=note)
                todo = [i for i in mine if i not in done and i not in bad]
                state = {"error": None, "resumed": len(done), "todo": len(todo), "bad": len(bad)}
            except FastallError as err:
                state = {"error": str(err)}
            states = group.all_gather(state)
            _agree(states, env.rank)
            summary.resumed = sum(s["resumed"] for s in states)
            if any(s["resumed"] or s["bad"] for s in states):
                left = sum(s["todo"] for s in states)
                where = f"{base} ({env.world} ranks)"
                note(f"resuming: {summary.resumed} images already done in {where}, {left} to go")
            loop_start = time.perf_counter()
            if todo:
                run(
                    model,
                    records,
                    todo,
                    store,
                    dev=dev,
                    size=image_size,
                    views=views,
                    dim=dim,
                    norm=(info.mean, info.std),
                    seed=seed,
                    fill=fill,
                    amp=choice.autocast_dtype,
                    batch_size=batch_size,
                    workers=workers,
                    skip_bad=skip_bad,
                    progress=progress and env.is_main,
                )
            summary.loop_seconds = time.perf_counter() - loop_start
            group.wait()
            joined = join_shards(group, store, len(records), views, dim, key)
            if joined is not None:
                kill_point("finalize")
                provenance = {
                    **_provenance(dev, info, batch_size, workers, data),
                    **choice.record(),
                    **classes,
                }
                _write(out, records, *joined, ds.class_names, key_params, provenance)
                kill_point("cleanup")
            group.wait()
            store.remove()
            if env.is_main:
                final = read_cache(out, load_features=False)
                summary.images, summary.skipped = final.n_images, final.skipped
                summary.computed = final.n_images - summary.resumed
                summary.cache_bytes = out.stat().st_size
    if env.local_rank == 0:
        with contextlib.suppress(OSError):
            base.rmdir()
    summary.seconds = time.perf_counter() - start
    return summary


def _agree(states: list[dict[str, Any]], rank: int) -> None:
    """Raise this rank's error, else the first other rank's, else a disagreement on the cache key."""
    errors = [(r, s["error"]) for r, s in enumerate(states) if s["error"]]
    if errors:
        mine = states[rank]["error"]
        raise FastallError(mine or f"rank {errors[0][0]}: {errors[0][1]}")
    first = states[0].get("key_params")
    for r, state in enumerate(states[1:], start=1) if first is not None else ():
        if cache_key(state["key_params"]) != cache_key(first):
            raise FastallError(
                f"rank {r} would extract something else than rank 0 (rank 0 -> rank {r}): "
                + "; ".join(diff_params(first, state["key_params"]))
                + "; every rank needs the same data and settings"
            )


def join_shards(
    group: Group, store: PartialStore, n: int, views: int, dim: int, key: str
) -> tuple[list[int], np.ndarray, np.ndarray, dict[int, str], dict[int, Stamp]] | None:
    """Every rank's finished rows gathered on rank 0, checked and put in index order.

    Rank 0 gets ``(rows, features [N, V, D], params [N, V, P], skipped {index: reason}, content stamps
    {index: Stamp})``; the others None.
    Every rank raises the same :class:`CacheError` when the shards do not cover each image exactly once, or
    hold another cache key or shape.
    """
    done, bad = store.load(n, views, dim)
    rows = sorted(done)
    n_params = done[rows[0]][1].shape[-1] if rows else len(VIEW_PARAM_NAMES)
    mine = {
        "key": (store.meta() or {}).get("key"),
        "rows": rows,
        "bad": bad,
        "shapes": [[views, dim], [views, n_params]],
        "stamps": {i: s.as_ints() for i, s in store.stamps().items()},
    }
    parts = group.all_gather(mine)
    problem = coverage_problem(parts, n, key)
    if problem:
        raise CacheError(f"{store.dir.parent}: {problem}; use --overwrite to start over")
    if not group.env.is_main:
        feats = np.stack([done[i][0] for i in rows]) if rows else np.empty((0, views, dim), np.float16)
        params = np.stack([done[i][1] for i in rows]) if rows else np.empty((0, views, n_params), np.float32)
        del done
        group.gather_arrays([feats, params])
        return None
    nothing = [np.empty((0, views, dim), np.float16), np.empty((0, views, n_params), np.float32)]
    arrays = group.gather_arrays(nothing)
    every = np.sort(np.concatenate([np.asarray(p["rows"], dtype=np.int64) for p in parts]))
    features = np.empty((len(every), views, dim), dtype=np.float16)
    view_params = np.empty((len(every), views, n_params), dtype=np.float32)
    for at, i in zip(np.searchsorted(every, rows).tolist(), rows, strict=True):
        features[at], view_params[at] = done.pop(i)
    for part, (f, p) in zip(parts[1:], arrays[1:], strict=True):
        at = np.searchsorted(every, np.asarray(part["rows"], dtype=np.int64))
        features[at], view_params[at] = f, p
    skipped = {i: reason for part in parts for i, reason in part["bad"].items()}
    stamps = {i: Stamp.from_ints(row) for part in parts for i, row in part.get("stamps", {}).items()}
    return every.tolist(), features, view_params, skipped, stamps


def coverage_problem(parts: list[dict[str, Any]], n: int, key: str) -> str | None:
    """What is wrong with the ranks' shards together (None: every image exactly once, one key, one shape)."""
    keys = [r for r, p in enumerate(parts) if p["key"] != key]
    if keys:
        return f"the shards of rank {keys[0]} belong to another extract (cache key {parts[keys[0]]['key']})"
    shapes = {repr(p["shapes"]) for p in parts}
    if len(shapes) > 1:
        return f"the ranks' shards have different shapes: {', '.join(sorted(shapes))}"
    seen = np.zeros(n, dtype=np.int64)
    for p in parts:
        for indices in (p["rows"], list(p["bad"])):
            if indices and (min(indices) < 0 or max(indices) >= n):
                return f"shard indices outside 0..{n - 1}"
            np.add.at(seen, np.asarray(indices, dtype=np.int64), 1)
    twice, missing = np.flatnonzero(seen > 1), np.flatnonzero(seen == 0)
    if twice.size:
        return f"{twice.size} images are in more than one rank's shards (first: image {twice[0]})"
    if missing.size:
        return f"{missing.size} images are in no rank's shards (first: image {missing[0]})"
    return None
