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
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from fastall import __version__
from fastall.errors import FastallError
from fastall.reporting.provenance import command_line
from fastall.reporting.tables import param_cells, sweep_row_cells
from fastall.system import csvsafe
from fastall.system.jsonable import plain
from fastall.system.runfolder import atomic_folder, check_target
from fastall.training.config import HeadConfig, HeadResult, TrainOptions
from fastall.training.divergence import diverged, metrics_or_nan
from fastall.training.engine import time_floor, train_stacks
from fastall.training.grid import Range, check_budget, count_configs, expand, parse_grid, sample
from fastall.training.metrics import summarize
from fastall.training.presets import protocol_record
from fastall.training.probe import ProbeResult, probe_cache
from fastall.training.train_head import Prepared, prepare, train_by_protocol

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
    **keywords: Any,
) -> SweepResult:
    """Train every configuration on train-head's folds and rank them by ``metric`` (mean over folds).

    ``options`` (folds, test, holdout, seed, device, precision, overwrite, progress, console) are
    train-head's, with its protocol (``selection`` on the fold: the paper's stacks; inner: the preset's
    protocol per configuration); ``base``: the head the grid varies (the preset's; default the paper's).
    The flat keywords of earlier versions (``folds=..., device=...``) still work and override them."""
    t_start = time.perf_counter()
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
    if options.console is not None and options.progress:
        floor = time_floor(configs, options.folds, n_pool, prep.data.dim, prep.device)
        options.console.print(f"[dim]sweep: {estimate}; {floor}[/]", highlight=False)
    probe = probe_cache(prep.cache, prep.splits, positive=prep.positive.index) if options.probe else None
    t0 = time.perf_counter()
    if options.selection == "fold":
        with _GroupProgress(options.progress, options.console, configs) as on_progress:
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
        heads = _by_protocol(prep, configs, options, probe)
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


class _GroupProgress:
    """A rich progress bar over the shape groups (and their epochs); a no-op when disabled."""

    def __init__(self, enabled: bool, console: Console | None, configs: list[HeadConfig]) -> None:
        self.enabled, self.console = enabled, console
        sizes: dict[tuple[int, int], int] = {}
        for c in configs:
            sizes[c.shape] = sizes.get(c.shape, 0) + 1
        self.shapes, self.sizes = list(sizes), list(sizes.values())

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("configurations"),
            TimeElapsedColumn(),
            console=self.console or Console(stderr=True),
        )
        self.bar.__enter__()
        self.task = self.bar.add_task("sweep", total=sum(self.sizes))

        def report(group: int, groups: int, done: float, total: float) -> None:
            hidden, batch = self.shapes[group]
            finished = sum(self.sizes[:group]) + self.sizes[group] * done / total
            where = f"group {group + 1}/{groups}: hidden {hidden}, batch {batch}"
            self.bar.update(self.task, completed=int(finished), description=where)

        return report

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


def _by_protocol(
    prep: Prepared, configs: list[HeadConfig], options: TrainOptions, probe: ProbeResult | None
) -> list[HeadResult]:
    """Each configuration through train-head's own protocol (the preset's selection on an inner split, its
    start at the probe), one after the other; the fold heads, tagged with their configuration."""
    test = replace(prep, data=replace(prep.data, test=np.empty(0, dtype=np.int64)))
    heads = []
    for i, cfg in enumerate(configs):
        results, _ = train_by_protocol(test, [cfg], replace(options, tune=None), probe)
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


def print_sweep(result: SweepResult, console: Console | None = None, top: int = 20) -> None:
    """The ranked table (mean ± std over folds) and the train-head command of the best configuration."""
    console = console or Console(stderr=True)
    r = result.results
    metric, varying = r["metric"], r["varying"] or ["lr"]
    table = Table(
        title=f"Sweep: {len(r['configs'])} configurations × {r['folds']} patient-level folds, "
        f"ranked by {metric}",
        title_justify="left",
    )
    for col in ("#", *varying, f"{metric} mean±std", "Acc %", "F1", "AUC", "val loss"):
        table.add_column(col, justify="right", no_wrap=True)
    probe = (r.get("probe") or {}).get("summary")
    if probe:
        table.add_row("probe", *sweep_row_cells(probe, metric, ["" for _ in varying]), style="cyan")
        table.add_section()
    for row in r["configs"][:top]:
        rank = str(row["rank"]) + (" diverged" if row.get("diverged") else "")
        table.add_row(rank, *sweep_row_cells(row["summary"], metric, param_cells(row["params"], varying)))
    console.print(table)
    if len(r["configs"]) > top:
        console.print(f"... {len(r['configs']) - top} more in {result.out / 'results.csv'}")
    t = r["timings"]
    optimistic = (r.get("protocol") or {}).get("optimistic", True)
    console.print(
        f"{len(r['configs'])} configurations in {t['train_s']:.1f} s "
        f"({t['configs_per_s']:.2f}/s) on "
        f"{r['device']} ({r['precision']}), preset {r.get('preset') or 'paper'}"
        f"{' (selection on the reported fold: optimistic)' if optimistic else ''}"
        f"; the probe row is the linear probe on the same folds; results in {result.out}",
        highlight=False,
        soft_wrap=True,
    )
    if r.get("probe_note"):
        console.print(f"[yellow]warning:[/] {r['probe_note']}", highlight=False, soft_wrap=True)
    console.print("Best configuration, as a train-head run:")
    console.print(r["best"]["command"], soft_wrap=True, highlight=False, markup=False)
    if result.report is not None:
        console.print(f"Report: {result.report.path}", highlight=False, soft_wrap=True)
