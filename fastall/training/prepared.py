"""A loaded cache, split by patient and audited, on the training device: what every training command starts
from (train-head, sweep, probe, compare)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastall.data.positive import PositiveClass, resolve_positive
from fastall.errors import FastallError
from fastall.features.cache import FeatureCache, read_cache
from fastall.system.devices import decide_precision, resolve_device
from fastall.system.notices import Notices
from fastall.training.config import StackData, TrainOptions
from fastall.training.hygiene import check_rows, content_leak_notes
from fastall.training.run_warnings import data_warnings
from fastall.training.splits import Splits, audit_splits, make_splits


@dataclass
class Prepared:
    """A loaded cache with its audited patient-level splits, ready for the engine."""

    cache: FeatureCache
    splits: Splits
    audit: list[dict]
    data: StackData
    device: torch.device
    precision: str
    load_s: float
    precision_record: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    positive: PositiveClass | None = None
    warnings: Notices = field(default_factory=Notices)


def prepare(cache_path: str | Path, options: TrainOptions) -> Prepared:
    """Read the cache once (float16), split by patient (``options``: folds, test, holdout, seed), audit, and
    put the features on the device (``options.dedupe``: one copy of byte-identical images, ``hygiene``)."""
    dev = resolve_device(options.device)
    choice = decide_precision(options.precision, dev, allowed=("fp32", "bf16"))
    prec = choice.precision
    t0 = time.perf_counter()
    cache = read_cache(cache_path)
    if cache.n_images == 0:
        raise FastallError(f"{cache.path}: the cache holds no images")
    positive = resolve_positive(cache.class_names, options.positive, cache.attrs.get("positive_class"))
    cache, notes = check_rows(cache, dedupe=options.dedupe)
    splits = make_splits(
        cache.labels,
        cache.patients,
        cache.sources,
        folds=options.folds,
        test=options.test,
        holdout=options.holdout,
        seed=options.seed,
        class_names=cache.class_names,
    )
    audit = audit_splits(splits, cache.patients, cache.content_hashes)
    warnings = data_warnings(cache, positive, notes)
    leaks = content_leak_notes(audit)
    warnings.extend("leakage", leaks)
    notes += leaks
    features = torch.from_numpy(np.ascontiguousarray(cache.features))
    features = features.to(dev) if dev.type != "cpu" else features
    data = StackData(
        features,
        cache.labels,
        len(cache.class_names),
        splits.folds,
        splits.pool,
        splits.test,
        view_mode=options.train_views,
    )
    load_s = time.perf_counter() - t0
    return Prepared(cache, splits, audit, data, dev, prec, load_s, choice.record(), notes, positive, warnings)
