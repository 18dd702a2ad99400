"""`fastall sweep`: many head configurations × the same patient-level folds, trained as stacks.

The grid (``grid``: names, ranges, sampling) is ``name=v1,v2 name=v3 ...`` (full product) or, with
``random=N``, N samples. Every configuration runs through the same engine as train-head, so its per-fold
results equal those of ``fastall train-head`` with the printed command.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from fastall import __version__
from fastall.errors import FastallError
from fastall.reporting.provenance import command_line
from fastall.system import csvsafe
from fastall.system.events import Reporter, silent
from fastall.system.jsonable import plain
from fastall.system.runfolder import atomic_folder, check_target
from fastall.training.config import HeadConfig, HeadResult, TrainOptions
from fastall.training.divergence import diverged, metrics_or_nan
from fastall.training.engine import time_floor, train_stacks
from fastall.training.grid import Range, check_budget, count_configs, expand, parse_grid, sample
from fastall.training.metrics import summarize
from fastall.training.prepared import Prepared, prepare
from fastall.training.presets import protocol_record
from fastall.training.probe import ProbeResult, probe_cache
from fastall.training.train_head import train_by_protocol

SWEEP_FORMAT, SWEEP_VERSION = "fastall-sweep", 1
METRICS = ("auc", "accuracy", "f1")
DEFAULT_GRID = "lr=1e-4,3e-4,1e-3 dropout=0.3,0.5 hidden=256,512,1024 epochs=5,10 weight_decay=0,1e-4"
DEFAULT_RANGES = "lr=1e-5:1e-2 dropout=0.1:0.7 weight_decay=1e-6:1e-2 hidden=512 epochs=5"
FOLD_METRICS = ("accuracy", "precision", "recall", "f1", "auc")


@dataclass
class SweepResult:
    out: Path
    results: dict[str, Any]
    report: Any = None  # fastall.reporting.run_report.Report

    @property
    def best(self) -> dict:
        return self.results["best"]


def sweep(
    cache_path: str | Path,
    out: str | Path,
    *,
    grid: str | dict | None = None,
    random: int | None = None,
    metric: str = "auc",
    options: TrainOptions | None = None,
    base: HeadConfig | None = None,
    reporter: Reporter | None = None,
    **keywords: Any,
) -> SweepResult:
    """Train every configuration on train-head's folds and rank them by ``metric`` (mean over folds).

    ``options`` (folds, test, holdout, seed, device, precision, overwrite, progress) are
    train-head's, with its protocol (``selection`` on the fold: the paper's stacks; inner: the preset's
    protocol per configuration); ``base``: the head the grid varies (the preset's; default the paper's).
    The flat keywords of earlier versions (``folds=..., device=...``) still work and override them.
    Silent: the estimate and the progress go to ``reporter`` (``fastall.system.events``)."""
    t_start = time.perf_counter()
    reporter = reporter or silent()
    options = replace(options or TrainOptions(), **keywords)
    if metric not in METRICS:
        raise FastallError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    text = grid if isinstance(grid, str) else None
    if grid is None:
        text = DEFAULT_RANGES if random else DEFAULT_GRID
        grid = text
    if random is not None and random < 1:
        raise FastallError(f"--random {random}: expected at least 1 configuration")
    spec = parse_grid(grid, allow_ranges=bool(random)) if isinstance(grid, str) else grid
    check_target(Path(out).absolute(), options.overwrite, kind=SWEEP_FORMAT)
    prep = prepare(cache_path, options)
    flag = "--random" if random else "--grid"
    n_pool = int(prep.splits.pool.size)
    estimate = check_budget(count_configs(spec, random), options.folds, n_pool, prep.data.classes, flag)
    configs = sample(spec, random, options.seed, base) if random else expand(spec, base)
    if options.progress:
        floor = time_floor(configs, options.folds, n_pool, prep.data.dim, prep.device)
        reporter.info(f"sweep: {estimate}; {floor}", code="estimate")
    probe = probe_cache(prep.cache, prep.splits, positive=prep.positive.index) if options.probe else None
    t0 = time.perf_counter()
    if options.selection == "fold":
        with group_progress(reporter if options.progress else None, configs) as on_progress:
            heads = train_stacks(
                replace(prep.data, test=np.empty(0, dtype=np.int64)),
                configs,
                seed=options.seed,
                precision=prep.precision,
                final=False,
                states=False,
                progress=on_progress,
            )
    else:
        heads = _by_protocol(prep, configs, options, probe, reporter)
    train_s = time.perf_counter() - t0
    table = _rank(prep, configs, heads, metric)
    varying = [f.name for f in fields(HeadConfig) if len({getattr(c, f.name) for c in configs}) > 1]
    best = next((row for row in table if not row["diverged"]), None)
    if best is None:
        raise FastallError("every configuration diverged (the loss became NaN/Inf): lower lr or weight_decay")
    results = {
        "format": SWEEP_FORMAT,
        "format_version": SWEEP_VERSION,
        "command": command_line(),
        "fastall_version": __version__,
        "cache": {
            "path": str(prep.cache.path.absolute()),
            "key": prep.cache.key,
            "key_params": prep.cache.key_params,
        },
        "grid": text
        if text is not None
        else {k: asdict(v) if isinstance(v, Range) else v for k, v in spec.items()},
        "random": random,
        "metric": metric,
        "folds": options.folds,
        "test": options.test,
        "holdout": options.holdout,
        "seed": options.seed,
        "device": prep.device.type,
        "precision": prep.precision,
        "varying": varying,
        "preset": options.preset,
        "protocol": protocol_record(options),
        "positive_class": prep.positive.name,
        "probe": _probe_row(probe, metric),
        "configs": table,
        "best": {**best, "command": train_head_command(prep.cache.path, configs[best["config"]], options)},
        "timings": {
            "load_cache_s": prep.load_s,
            "train_s": train_s,
            "configs_per_s": len(configs) / train_s,
            "total_s": time.perf_counter() - t_start,
        },
    }
    results["probe_note"] = probe_note(results)
    with atomic_folder(out, overwrite=options.overwrite) as tmp:
        _write_csv(tmp / "results.csv", table)
        (tmp / "results.json").write_text(json.dumps(plain(results), indent=2, allow_nan=False) + "\n")
        made = None
        if options.report:
            from fastall.reporting.run_report import write_report

            made = write_report(tmp, shown_as=Path(out).absolute())
    return SweepResult(Path(out).absolute(), results, made)


@contextmanager
def group_progress(reporter: Reporter | None, configs: list[HeadConfig]) -> Iterator[Callable | None]:
    """The engine's ``progress(group, groups, done, total)`` as a ``sweep`` task over the configurations,
    described by the shape group training now (None: no callback)."""
    if reporter is None:
        yield None
        return
    sizes: dict[tuple[int, int], int] = {}
    for c in configs:
        sizes[c.shape] = sizes.get(c.shape, 0) + 1
    shapes, counts = list(sizes), list(sizes.values())
    with reporter.task("sweep", sum(counts), unit="configurations", eta=False) as advance:
        last = 0

        def report(group: int, groups: int, done: float, total: float) -> None:
            nonlocal last
            hidden, batch = shapes[group]
            finished = int(sum(counts[:group]) + counts[group] * done / total)
            advance(
                finished - last, description=f"group {group + 1}/{groups}: hidden {hidden}, batch {batch}"
            )
            last = finished

        yield report


def _by_protocol(
    prep: Prepared,
    configs: list[HeadConfig],
    options: TrainOptions,
    probe: ProbeResult | None,
    reporter: Reporter,
) -> list[HeadResult]:
    """Each configuration through train-head's own protocol (the preset's selection on an inner split, its
    start at the probe), one after the other; the fold heads, tagged with their configuration."""
    test = replace(prep, data=replace(prep.data, test=np.empty(0, dtype=np.int64)))
    heads = []
    for i, cfg in enumerate(configs):
        results, _ = train_by_protocol(test, [cfg], replace(options, tune=None), probe, reporter)
        heads += [replace(r, config=i) for r in results if not r.final]
    return heads


def _probe_row(probe: ProbeResult | None, metric: str) -> dict | None:
    """The linear probe on the same folds: the row every configuration has to beat."""
    if probe is None:
        return None
    return {
        "summary": {k: probe.summary.get(k) for k in (*FOLD_METRICS, *(f"{m}_std" for m in FOLD_METRICS))}
    }


def probe_note(results: dict) -> str | None:
    """A line when no configuration beats the probe's mean ``metric``."""
    probe, metric = results.get("probe"), results["metric"]
    value = ((probe or {}).get("summary") or {}).get(metric)
    best = results["best"]["summary"].get(metric)
    if value is None or best is None or not math.isfinite(value) or best > value:
        return None
    return (
        f"no configuration beats the linear probe: the best {metric} {best:.3f} is not above the probe's "
        f"{value:.3f} on the same folds; use the probe (or fastall train-head's default preset)"
    )


def _rank(prep: Prepared, configs: list[HeadConfig], heads: list[HeadResult], metric: str) -> list[dict]:
    labels, k, pos = prep.cache.labels, prep.data.classes, prep.positive.index
    rows = []
    for i, cfg in enumerate(configs):
        per_fold = []
        for r in (h for h in heads if h.config == i):
            m = metrics_or_nan(labels[prep.splits.folds[r.fold][1]], r.probs["val"], k, False, pos)
            per_fold.append(
                {
                    "fold": r.fold,
                    "diverged": diverged(r),
                    "val_loss": r.val_loss,
                    "best_epoch": r.best_epoch,
                    **{n: m[n] for n in FOLD_METRICS},
                }
            )
        summary = summarize(per_fold, ("val_loss", *FOLD_METRICS))
        gone = any(f["diverged"] for f in per_fold)  # marked, ranked last, never recommended
        row = {"config": i, "params": asdict(cfg), "summary": summary, "folds": per_fold, "diverged": gone}
        rows.append(row)

    def key(row: dict) -> tuple:
        s = row["summary"]
        score = s[metric] if math.isfinite(s[metric]) else -math.inf
        return (row["diverged"], -score, s["val_loss"], row["config"])

    rows.sort(key=key)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def train_head_command(cache: Path, cfg: HeadConfig, options: TrainOptions, out: str = "runs/best") -> str:
    """The exact `fastall train-head` command that reproduces one configuration's folds (with the sweep's
    preset: views, selection, head start)."""
    parts = ["fastall", "train-head", shlex.quote(str(cache)), "--folds", str(options.folds), "--out", out]
    parts += ["--preset", options.preset or "paper"]
    if options.positive:
        parts += ["--positive", shlex.quote(options.positive)]
    parts += ["--test", options.test, "--holdout", repr(options.holdout)]
    for spec in HeadConfig.hparams():
        parts += spec.argv(getattr(cfg, spec.name))
    return " ".join([*parts, "--seed", str(options.seed), "--device", options.device])


def _write_csv(path: Path, table: list[dict]) -> None:
    names = list(table[0]["params"])
    cols = [
        "rank",
        "config",
        *names,
        "fold",
        "diverged",
        "val_loss",
        "best_epoch",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "auc",
    ]
    with open(path, "w", newline="") as fh:
        writer = csvsafe.dict_writer(fh, fieldnames=cols)
        writer.writeheader()
        for row in table:
            for f in row["folds"]:
                writer.writerow({"rank": row["rank"], "config": row["config"], **row["params"], **f})
