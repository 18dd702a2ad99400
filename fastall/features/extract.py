"""`fastall extract`: frozen backbone features of V views per image into a crash-safe HDF5 cache.

One function for one process and for every rank of a torchrun job (a :class:`~fastall.features.ranks.Share`).
This module decides what to compute (key, existing cache, partial work, lock) and assembles the result; the
settings are :class:`~fastall.features.extract_config.ExtractConfig`, the device loop
:mod:`fastall.features.loop`, the crash safety :mod:`fastall.features.shards`. Each finished batch is a shard
beside the target; ``CACHE.h5`` appears only when complete.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fastall.data.positive import class_attrs
from fastall.errors import CacheError, FastallError
from fastall.features import content
from fastall.features.backbone import load_backbone
from fastall.features.cache import cache_key, diff_params, read_cache
from fastall.features.cut import MapSplit, map_shape
from fastall.features.extract_config import EXTRACT_PRECISIONS, ExtractConfig
from fastall.features.extract_record import key_params_for, provenance, write_rows
from fastall.features.inputs import check_out, discover_dataset
from fastall.features.int8_quality import build_int8
from fastall.features.loop import run
from fastall.features.mapshards import ShardMaps, missing_maps, plan_maps
from fastall.features.quantize import QUANTIZATION, int8_hint, require_int8_cpu
from fastall.features.ranks import Share, agree, join_shards
from fastall.features.shards import PartialStore, cache_lock, claim_layout
from fastall.features.summary import ExtractSummary
from fastall.system import faults
from fastall.system.devices import decide_precision, precision_alias, resolve_device
from fastall.system.events import Reporter, silent
from fastall.viewparams import describe_fills

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    config: ExtractConfig | None = None,
    *,
    reporter: Reporter | None = None,
    share: Share | None = None,
    **settings: Any,
) -> ExtractSummary:
    """Compute (or resume, or find already done) the feature cache of ``data`` at ``out``.

    ``config``: every setting (:class:`~fastall.features.extract_config.ExtractConfig`); ``settings``: fields
    of it given by name instead (``extract(data, out, views=2, device="cpu")``), on top of ``config``.
    ``reporter`` receives the warnings (with codes) and the ``extract`` progress task (silent by default);
    they are also in the returned summary. ``share``: this process's rank of a torchrun job (call it on every
    rank; rank 0's summary is the cache's); None for one process.

    ``precision``: auto (bf16 where the device computes it natively, else fp32), fp32, bf16 or fp16;
    ``amp``/``amp_dtype`` are its older aliases. The precision used is in the cache key. Images whose file
    changed since their features were computed are refused, or recomputed with ``update``
    (:mod:`fastall.features.content`); ``verify_content`` hashes every file.
    """
    config = ExtractConfig.of(config, **settings)
    return _Extract(Path(data), Path(out), config, reporter or silent(), share or Share()).run()


class _Extract:
    """One call of :func:`extract`, on one rank (one process: rank 0 of 1, with a group of one)."""

    def __init__(self, data: Path, out: Path, cfg: ExtractConfig, reporter: Reporter, share: Share) -> None:
        self.data, self.out, self.cfg, self.reporter, self.share = data, out, cfg, reporter, share
        self.env = share.rank
        self.warnings: list[str] = []
        self.changed: list[int] = []
        self.todo: list[int] = []

    def warn(self, code: str, text: str, everywhere: bool = False) -> None:
        """A warning: kept in the summary; reported by rank 0 (``everywhere``: by every rank, named)."""
        self.warnings.append(text)
        if self.env.is_main:
            self.reporter.warn(code, text)
        elif everywhere:
            self.reporter.warn(code, f"rank {self.env.rank}: {text}")

    def warner(self, code: str, everywhere: bool = False) -> Callable[[str], None]:
        return lambda text: self.warn(code, text, everywhere)

    def run(self) -> ExtractSummary:
        start, cfg = time.perf_counter(), self.cfg
        if self.share.ranked and (cfg.update or cfg.verify_content):
            raise FastallError("--update and --verify-content run in one process: start extract alone")
        self.dev = resolve_device(self.share.device(cfg.device))
        wanted = precision_alias(cfg.precision, cfg.amp, cfg.amp_dtype)
        self.choice = decide_precision(wanted, self.dev, allowed=EXTRACT_PRECISIONS)
        if self.choice.precision == "int8":
            require_int8_cpu(self.dev)
        hint = int8_hint(self.dev, self.choice.precision)
        if hint and self.env.is_main:
            self.reporter.info(hint, code="int8-hint")
        if not self.choice.native:
            self.warn("precision", f"{self.choice.reason} (--precision auto picks fp32 here)")
        if self.env.is_main or cfg.scratch is None:  # with --scratch, only rank 0 needs --out's folder
            check_out(self.out, cfg.scratch)
        elif not Path(cfg.scratch).is_dir():
            raise FastallError(f"--scratch {cfg.scratch}: no such folder")
        if self.share.ranked and cfg.workers is None and self.dev.type == "cuda":
            self.cfg = replace(cfg, workers=self.env.workers(max(1, (os.cpu_count() or 1) - 2)))
        self.base, folder = self.share.shard_folder(self.out, cfg.scratch)
        self.store = PartialStore(self.out, folder)
        with contextlib.ExitStack() as stack, self.share.group(self.dev) as group:
            self.group = group
            states = self._together(lambda: self._plan(stack))
            summary = self._summary()
            if states[0]["existing"]:
                self._found(summary)
            else:
                self._compute(summary)
        if self.env.local_rank == 0:
            with contextlib.suppress(OSError):
                self.base.rmdir()
        summary.seconds = time.perf_counter() - start
        return summary

    def _together(self, step: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
        """``step`` on every rank, then every rank's state; any rank's FastallError stops them all."""
        try:
            state, error = step(), None
        except FastallError as err:
            state, error = {"error": str(err)}, err
        states = self.group.all_gather(state)
        if error is not None:
            raise error
        agree(states, self.env.rank)
        return states

    def _plan(self, stack: contextlib.ExitStack) -> dict[str, Any]:
        """The data, the backbone and the cache key; on rank 0 the lock and whether the cache is done."""
        cfg = self.cfg
        self.ds = discover_dataset(
            self.data, cfg.include, cfg.patient_regex, self.warner("data"), cfg.patients
        )
        self.classes, self.positive_line = class_attrs(self.ds.class_names, self.ds.layout, cfg.positive)
        self.records = self.ds.records
        content.views_warning(cfg.views, len(self.records), self.warner("views"))
        if self.env.is_main:
            stack.enter_context(cache_lock(self.out, warn=self.warner("lock")))
        self.model, self.info = load_backbone(
            cfg.weights,
            seed=cfg.seed,
            backbone=cfg.backbone,
            pool=cfg.pool,
            layers=cfg.layers,
            image_size=cfg.image_size,
        )
        for message in self.info.warnings:
            self.warn("backbone", message)
        maps = self._maps() if cfg.maps else {}
        self.key_params = (
            key_params_for(
                info=self.info,
                image_size=self.info.input_size(cfg.image_size),
                views=cfg.views,
                seed=cfg.seed,
                amp=self.choice.precision != "fp32",
                amp_dtype=self.choice.precision,
                records=self.records,
                class_names=self.ds.class_names,
                fill=cfg.fill,
                quantization=QUANTIZATION if self.choice.precision == "int8" else None,
            )
            | maps
        )
        self.key = cache_key(self.key_params)
        existing = False
        if self.env.is_main and _existing_matches(self.out, self.key_params, cfg.overwrite):
            old = read_cache(self.out, load_features=False)
            update = (cfg.update or cfg.overwrite) and not self.share.ranked
            check = dict(verify=cfg.verify_content, update=update, warn=self.warner("content"))
            self.changed = content.check_cache(self.out, old, self.records, **check)
            existing = not self.changed
        return {"error": None, "key_params": self.key_params, "existing": existing}

    def _maps(self) -> dict[str, Any]:
        """With --maps: the backbone split at the cut (its pooled features unchanged) and the key parameters
        of the maps."""
        cfg = self.cfg
        if self.share.ranked or cfg.layers or cfg.pool:
            raise FastallError("--maps cuts the plain backbone in one process: drop --layers/--pool/torchrun")
        self.model = MapSplit(self.model, self.info.name, cfg.maps)
        self.map_shape = map_shape(self.model.front, self.info.input_size(cfg.image_size))
        self.map_views = cfg.map_views or cfg.views
        return {"maps": cfg.maps, "map_views": self.map_views, "map_shape": list(self.map_shape)}

    def _summary(self) -> ExtractSummary:
        ranks = f" x {self.env.world} ranks" if self.share.ranked else ""
        return ExtractSummary(
            path=self.out,
            images=len(self.records),
            views=self.cfg.views,
            seconds=0.0,
            device=f"{self.dev.type}{ranks}" if ranks else str(self.dev),
            amp_dtype=self.key_params["amp_dtype"],
            key=self.key,
            fill=self.cfg.fill,
            warnings=self.warnings,
            precision=self.choice.to_dict(),
            positive=self.positive_line,
        )

    def _found(self, summary: ExtractSummary) -> None:
        """The cache is complete with these settings: nothing to do."""
        if (self.store.meta() or {}).get("key") == self.key:
            self.store.remove()
        if self.env.is_main:
            old = read_cache(self.out, load_features=False)
            summary.images, summary.skipped, summary.skipped_existing = old.n_images, old.skipped, True
            summary.fills = describe_fills(old.view_params)
            summary.cache_bytes = self.out.stat().st_size

    def _resume(self) -> dict[str, Any]:
        """This rank's shard store opened (or started) and checked; what is left of its share."""
        cfg, store, n, dim = self.cfg, self.store, len(self.records), self.info.feature_dim
        if self.changed:
            store.remove()
        claim_layout(self.base, self.env.world, cfg.overwrite)
        _open_partial(store, self.key_params, cfg.overwrite, self.warner("partial", True))
        if self.changed and not cfg.overwrite:
            content.seed_update(store, self.out, self.records, self.changed, self.warner("content"))
        done, bad = store.load(n, cfg.views, dim, warn=self.warner("partial", True))
        check = dict(verify=cfg.verify_content, update=cfg.update, warn=self.warner("content"))
        if content.check_partial(store, self.records, list(done), **check):
            done, bad = store.load(n, cfg.views, dim, warn=self.warner("partial", True))
        lost = missing_maps(store.dir, list(done), (self.map_views, *self.map_shape)) if cfg.maps else set()
        if lost:
            self.warn(
                "partial", f"{len(lost)} done image(s) lack their maps in {store.dir}: recomputing them"
            )
            store.drop(lost)
            done, bad = store.load(n, cfg.views, dim, warn=self.warner("partial", True))
        self.todo = [i for i in self.share.indices(n) if i not in done and i not in bad]
        return {"error": None, "resumed": len(done), "todo": len(self.todo), "bad": len(bad)}

    def _int8(self) -> dict[str, Any]:
        """The int8 backbone, calibrated on this dataset and checked against fp32 (refused if it fails)."""
        built = build_int8(
            self.model,
            self.records,
            size=self.info.input_size(self.cfg.image_size),
            norm=(self.info.mean, self.info.std),
            seed=self.cfg.seed,
            classes=len(self.ds.class_names),
        )
        self.model_run, self.int8_attrs = built.model, built.attrs()
        if self.env.is_main:
            self.reporter.info(f"int8 quality against fp32: {built.quality.line()}", code="int8-quality")
        return {"error": None}

    def _compute(self, summary: ExtractSummary) -> None:
        """Every rank extracts what is left of its share; rank 0 joins the shards into the one cache."""
        cfg, n = self.cfg, len(self.records)
        self.model_run, self.int8_attrs = self.model, {}
        if self.choice.precision == "int8":
            self._together(self._int8)
        states = self._together(self._resume)
        summary.resumed = sum(s["resumed"] for s in states)
        if any(s["resumed"] or s["bad"] for s in states):
            where = f"{self.base} ({self.env.world} ranks)" if self.share.ranked else str(self.store.dir)
            left = sum(s["todo"] for s in states)
            self.warn("resume", f"resuming: {summary.resumed} images already done in {where}, {left} to go")
        if cfg.maps and self.env.is_main:
            self.reporter.info(plan_maps(self.out, self.store.dir, n, self.map_views, self.map_shape)[1])
        loop_start, used = time.perf_counter(), cfg.batch_size
        if self.todo:
            reporter = self.reporter if self.env.is_main else silent()
            used = run(
                self.model_run,
                self.info,
                self.records,
                self.todo,
                self.store,
                config=cfg,
                dev=self.dev,
                amp=None if self.choice.precision == "int8" else self.choice.autocast_dtype,
                reporter=reporter,
            )
        summary.loop_seconds = time.perf_counter() - loop_start
        self.group.wait()
        joined = join_shards(self.group, self.store, n, cfg.views, self.info.feature_dim, self.key)
        if joined is not None:
            faults.reached("finalize")
            record = provenance(self.dev, self.info, cfg, self.data) | self.choice.record() | self.classes
            record |= self.int8_attrs
            if used and not cfg.batch_size:
                record["batch_size_auto"] = used
            if self.todo:
                record["extract_s_per_image"] = summary.loop_seconds / len(self.todo)
            shape = (self.map_views, *self.map_shape) if cfg.maps else None
            maps = ShardMaps(self.store.dir, joined[0], shape) if shape else None
            write_rows(self.out, self.records, *joined, self.ds.class_names, self.key_params, record, maps)
            faults.reached("cleanup")
        self.group.wait()
        self.store.remove()
        if self.env.is_main:
            final = read_cache(self.out, load_features=False)
            summary.key = final.key
            for message in content.duplicate_warnings(final):
                self.warn("duplicates", message)
            summary.images, summary.skipped = final.n_images, final.skipped
            summary.fills = describe_fills(final.view_params)
            summary.computed = final.n_images - summary.resumed
            summary.cache_bytes = self.out.stat().st_size
