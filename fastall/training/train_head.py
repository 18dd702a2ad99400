"""`fastall train-head`: patient-level k-fold CV of the head from the feature cache, plus test metrics.

One stack trains the k fold heads and the final head (all non-test images, kept at the median of the folds'
best-epoch counts) together. Test metrics come from the final head and from the ensemble of fold heads.
Outputs (written atomically, ``run_files``): metrics.json, folds.csv, predictions.csv, head.pt and report/
(the HTML report, unless ``options.report`` is off).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from fastall.errors import FastallError
from fastall.features.cache import FeatureCache, read_cache
from fastall.system.devices import decide_precision, resolve_device
from fastall.system.jsonable import plain
from fastall.system.runfolder import atomic_folder, check_target
from fastall.training import run_files
from fastall.training.config import HeadConfig, StackData, TrainOptions, split_keywords
from fastall.training.engine import train_stacks
from fastall.training.patients import run_patient_level
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


def prepare(cache_path: str | Path, options: TrainOptions) -> Prepared:
    """Read the cache once (float16), split by patient (``options``: folds, test, holdout, seed), audit, and
    put the features on the device."""
    dev = resolve_device(options.device)
    choice = decide_precision(options.precision, dev, allowed=("fp32", "bf16"))
    prec = choice.precision
    t0 = time.perf_counter()
    cache = read_cache(cache_path)
    if cache.n_images == 0:
        raise FastallError(f"{cache.path}: the cache holds no images")
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
    audit = audit_splits(splits, cache.patients)
    features = torch.from_numpy(np.ascontiguousarray(cache.features))
    features = features.to(dev) if dev.type != "cpu" else features
    data = StackData(features, cache.labels, len(cache.class_names), splits.folds, splits.pool, splits.test)
    return Prepared(cache, splits, audit, data, dev, prec, time.perf_counter() - t0, choice.record())


@dataclass
class RunResult:
    """What train-head wrote: the run folder and the content of its metrics.json."""

    out: Path
    metrics: dict[str, Any]
    report: Any = None  # fastall.reporting.run_report.Report: the HTML report's path and notes

    @property
    def summary(self) -> dict:
        return self.metrics["summary"]

    @property
    def folds(self) -> list[dict]:
        return self.metrics["folds"]

    @property
    def test(self) -> dict | None:
        return self.metrics["test"]


def train_head(
    cache_path: str | Path,
    out: str | Path,
    config: HeadConfig | None = None,
    options: TrainOptions | None = None,
    **keywords: Any,
) -> RunResult:
    """Cross-validate one head configuration by patient and write the run folder ``out``.

    ``config`` defaults to the paper's head (Adam 1e-4, batch 32, 5 epochs, dropout 0.5, 512 hidden) with
    ReduceLROnPlateau (factor 0.1, patience 2); without ``patience`` every fold keeps its last epoch, with it
    training stops after ``patience`` epochs without a lower validation loss and the best epoch is restored.
    ``options`` say how it runs (folds, test set, seed, device, ...). The flat keywords of earlier versions
    (``lr=..., folds=...``) still work and override both.
    """
    t_start = time.perf_counter()
    config, options = split_keywords(config, options, keywords)
    config.check()
    out = Path(out)
    check_target(out.absolute(), options.overwrite)
    prep = prepare(cache_path, options)
    t0 = time.perf_counter()
    with _EpochProgress(options.progress, options.console, config.epochs) as on_progress:
        results = train_stacks(
            prep.data,
            [config],
            seed=options.seed,
            precision=prep.precision,
            final=True,
            tta=options.tta,
            progress=on_progress,
        )
    train_s = time.perf_counter() - t0
    run_config = {
        "folds": options.folds,
        "test": options.test,
        "holdout": options.holdout,
        **asdict(config),
        "tta": options.tta,
        "seed": options.seed,
        "device": prep.device.type,
        "precision": prep.precision,
    }
    metrics, made = run_files.run_metrics(prep, results, run_config, options.tta), None
    t0 = time.perf_counter()
    with atomic_folder(out, overwrite=options.overwrite) as tmp:
        run_files.write_head(tmp / "head.pt", prep, results, config, run_config)
        run_files.write_folds_csv(tmp / "folds.csv", prep)
        run_files.write_predictions(tmp / "predictions.csv", prep, results, options.tta)
        metrics["patient_level"] = run_patient_level(tmp / "predictions.csv", prep.cache.class_names)
        metrics["timings"] = {
            "load_cache_s": prep.load_s,
            "train_s": train_s,
            "write_s": time.perf_counter() - t0,
            "total_s": time.perf_counter() - t_start,
        }
        (tmp / "metrics.json").write_text(json.dumps(plain(metrics), indent=2, allow_nan=False) + "\n")
        if options.report:  # imported here: matplotlib only when a report is made
            from fastall.reporting.run_report import write_report

            made = write_report(tmp, shown_as=out.absolute())
    return RunResult(out.absolute(), metrics, made)


class _EpochProgress:
    """A transient rich progress bar over epochs (a no-op when ``enabled`` is false)."""

    def __init__(self, enabled: bool, console: Console | None, epochs: int) -> None:
        self.enabled, self.console, self.epochs = enabled, console, epochs

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import Progress

        self.bar = Progress(console=self.console or Console(stderr=True), transient=True)
        self.bar.__enter__()
        self.task = self.bar.add_task("training heads", total=self.epochs)
        return lambda group, groups, done, total: self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


def print_run_summary(result: RunResult, console: Console | None = None) -> None:
    """The leakage audit, the per-fold table with mean ± std and peak, and the test metrics, each beside
    the paper's Tables II and III."""
    from fastall.reporting.tables import print_run

    print_run(result.metrics, result.out, console or Console(stderr=True), result.report)
