"""`fastall sweep`: many head configurations × the same patient-level folds, trained as stacks.

The grid is ``name=v1,v2 name=v3 ...`` (full product) or, with ``random=N``, N samples where ``name=a:b`` is a
range (log-uniform for lr and weight_decay, uniform otherwise, integers for integer parameters) and a list is
a choice. Every configuration runs through the same engine as train-head, so its per-fold results equal
those of ``fastall train-head`` with the printed command.
"""

from __future__ import annotations

import csv
import itertools
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

from fastall.errors import FastallError
from fastall.reporting.tables import fmt
from fastall.system.runfolder import atomic_folder, check_target
from fastall.training.config import HeadConfig, HeadResult
from fastall.training.divergence import diverged, metrics_or_nan
from fastall.training.engine import train_stacks
from fastall.training.metrics import json_safe
from fastall.training.train_head import Prepared, prepare

SWEEP_FORMAT, SWEEP_VERSION = "fastall-sweep", 1
METRICS = ("auc", "accuracy", "f1")
DEFAULT_GRID = "lr=1e-4,3e-4,1e-3 dropout=0.3,0.5 hidden=256,512,1024 epochs=5,10 weight_decay=0,1e-4"
DEFAULT_RANGES = "lr=1e-5:1e-2 dropout=0.1:0.7 weight_decay=1e-6:1e-2 hidden=512 epochs=5"
_KIND = {f.name: f.type for f in fields(HeadConfig)}
_LOG = ("lr", "weight_decay")


@dataclass(frozen=True)
class Range:
    low: float
    high: float


def _value(name: str, text: str, token: str) -> Any:
    kind = _KIND[name]
    try:
        if name == "patience" and text.lower() in ("none", "off", "-"):
            return None
        if kind == "bool":
            if text.lower() not in ("true", "false", "on", "off", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "on", "1", "yes")
        if kind == "str":
            return text
        if "int" in kind:
            number = float(text)
            if number != int(number):
                raise ValueError
            return int(number)
        return float(text)
    except ValueError:
        number = "an integer" if "int" in kind else "a number"
        expected = {"bool": "true or false", "str": "a word"}.get(kind, number)
        raise FastallError(f"bad --grid token {token!r}: {text!r} is not {expected}") from None


def _check(name: str, value: Any, token: str) -> None:
    try:
        replace(HeadConfig(), **{name: value}).check()
    except FastallError as err:
        raise FastallError(f"bad --grid token {token!r}: {str(err).split(': ', 1)[-1]}") from None


def parse_grid(text: str, *, allow_ranges: bool = False) -> dict[str, list | Range]:
    """``"lr=1e-4,3e-4 hidden=256:1024"`` -> ``{"lr": [1e-4, 3e-4], "hidden": Range(256, 1024)}``."""
    grid: dict[str, list | Range] = {}
    for token in text.split():
        name, sep, values = token.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise FastallError(f"bad --grid token {token!r}: expected name=value[,value...] or name=low:high")
        if name not in _KIND:
            raise FastallError(
                f"bad --grid token {token!r}: unknown parameter {name!r} (known: {', '.join(_KIND)})"
            )
        if name in grid:
            raise FastallError(f"bad --grid token {token!r}: {name} is given twice")
        if ":" in values:
            if not allow_ranges:
                raise FastallError(f"bad --grid token {token!r}: a range needs --random N")
            if _KIND[name] not in ("float", "int"):
                raise FastallError(f"bad --grid token {token!r}: {name} takes a list of values, not a range")
            low, _, high = values.partition(":")
            lo, hi = _value(name, low, token), _value(name, high, token)
            if lo > hi:
                raise FastallError(f"bad --grid token {token!r}: the range needs low <= high")
            _check(name, lo, token)
            _check(name, hi, token)
            grid[name] = Range(lo, hi)
            continue
        items = [v for v in values.split(",") if v.strip()]
        if not items:
            raise FastallError(f"bad --grid token {token!r}: no values")
        parsed = [_value(name, v.strip(), token) for v in items]
        for v in parsed:
            _check(name, v, token)
        grid[name] = list(dict.fromkeys(parsed))
    if not grid:
        raise FastallError("--grid is empty: give name=value[,value...] tokens")
    return grid


def expand(grid: dict[str, list | Range]) -> list[HeadConfig]:
    names = list(grid)
    return [
        replace(HeadConfig(), **dict(zip(names, combo, strict=True)))
        for combo in itertools.product(*(grid[n] for n in names))
    ]


def sample(grid: dict[str, list | Range], n: int, seed: int) -> list[HeadConfig]:
    """N configurations: log-uniform for lr/weight_decay ranges above 0, else uniform; lists are choices."""
    if n < 1:
        raise FastallError(f"--random {n}: expected at least 1 configuration")
    rng = np.random.default_rng([seed, 0x5EE9])
    out = []
    for _ in range(n):
        values = {}
        for name, spec in grid.items():
            if isinstance(spec, list):
                values[name] = spec[int(rng.integers(len(spec)))]
            elif "int" in _KIND[name]:
                values[name] = int(rng.integers(int(spec.low), int(spec.high) + 1))
            elif name in _LOG and spec.low > 0:
                values[name] = float(math.exp(rng.uniform(math.log(spec.low), math.log(spec.high))))
            else:
                values[name] = float(rng.uniform(spec.low, spec.high))
        out.append(replace(HeadConfig(), **values))
    return out


@dataclass
class SweepResult:
    out: Path
    results: dict[str, Any]

    @property
    def best(self) -> dict:
        return self.results["best"]


def sweep(
    cache_path: str | Path,
    out: str | Path,
    *,
    grid: str | dict | None = None,
    random: int | None = None,
    folds: int = 5,
    metric: str = "auc",
    test: str = "holdout",
    holdout: float = 0.1,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> SweepResult:
    """Train every configuration on train-head's folds and rank them by ``metric`` (mean over folds)."""
    t_start = time.perf_counter()
    if metric not in METRICS:
        raise FastallError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    text = grid if isinstance(grid, str) else None
    if grid is None:
        text = DEFAULT_RANGES if random else DEFAULT_GRID
        grid = text
    spec = parse_grid(grid, allow_ranges=bool(random)) if isinstance(grid, str) else grid
    configs = sample(spec, random, seed) if random else expand(spec)
    check_target(Path(out).absolute(), overwrite, kind=SWEEP_FORMAT)
    prep = prepare(
        cache_path, folds=folds, test=test, holdout=holdout, seed=seed, device=device, precision=precision
    )
    t0 = time.perf_counter()
    with _GroupProgress(progress, console, configs) as report:
        heads = train_stacks(
            replace(prep.data, test=np.empty(0, dtype=np.int64)),
            configs,
            seed=seed,
            precision=prep.precision,
            final=False,
            states=False,
            progress=report,
        )
    train_s = time.perf_counter() - t0
    table = _rank(prep, configs, heads, metric)
    varying = [n for n in _KIND if len({getattr(c, n) for c in configs}) > 1]
    best = next((row for row in table if not row["diverged"]), None)
    if best is None:
        raise FastallError("every configuration diverged (the loss became NaN/Inf): lower lr or weight_decay")
    cmd = train_head_command(
        prep.cache.path,
        configs[best["config"]],
        folds=folds,
        test=test,
        holdout=holdout,
        seed=seed,
        device=device,
    )
    results = {
        "format": SWEEP_FORMAT,
        "format_version": SWEEP_VERSION,
        "cache": {"path": str(prep.cache.path.absolute()), "key": prep.cache.key},
        "grid": text
        if text is not None
        else {k: asdict(v) if isinstance(v, Range) else v for k, v in spec.items()},
        "random": random,
        "metric": metric,
        "folds": folds,
        "test": test,
        "holdout": holdout,
        "seed": seed,
        "device": prep.device.type,
        "precision": prep.precision,
        "varying": varying,
        "configs": table,
        "best": {**best, "command": cmd},
        "timings": {
            "load_cache_s": prep.load_s,
            "train_s": train_s,
            "configs_per_s": len(configs) / train_s,
            "total_s": time.perf_counter() - t_start,
        },
    }
    with atomic_folder(out, overwrite=overwrite) as tmp:
        _write_csv(tmp / "results.csv", table)
        (tmp / "results.json").write_text(json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n")
    return SweepResult(Path(out).absolute(), results)


class _GroupProgress:
    """A rich progress bar over the shape groups (and their epochs); a no-op when disabled."""

    def __init__(self, enabled: bool, console: Console | None, configs: list[HeadConfig]) -> None:
        self.enabled, self.console = enabled, console
        self.shapes = list(dict.fromkeys(c.shape for c in configs))

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("groups"),
            TimeElapsedColumn(),
            console=self.console or Console(stderr=True),
        )
        self.bar.__enter__()
        self.task = self.bar.add_task("sweep", total=len(self.shapes))

        def report(group: int, groups: int, done: float, total: float) -> None:
            hidden, batch = self.shapes[group]
            self.bar.update(
                self.task, completed=group + done / total, description=f"hidden {hidden}, batch {batch}"
            )

        return report

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


def _rank(prep: Prepared, configs: list[HeadConfig], heads: list[HeadResult], metric: str) -> list[dict]:
    labels, k = prep.cache.labels, prep.data.classes
    rows = []
    for i, cfg in enumerate(configs):
        per_fold = []
        for r in (h for h in heads if h.config == i):
            m = metrics_or_nan(labels[prep.splits.folds[r.fold][1]], r.probs["val"], k, detail=False)
            per_fold.append(
                {
                    "fold": r.fold,
                    "diverged": diverged(r),
                    "val_loss": r.val_loss,
                    "best_epoch": r.best_epoch,
                    **{n: m[n] for n in ("accuracy", "precision", "recall", "f1", "auc")},
                }
            )
        summary = {}
        for name in ("val_loss", "accuracy", "precision", "recall", "f1", "auc"):
            v = np.array([f[name] for f in per_fold], dtype=float)
            v = v[np.isfinite(v)]
            summary[name] = float(v.mean()) if v.size else math.nan
            summary[f"{name}_std"] = float(v.std(ddof=1)) if v.size > 1 else math.nan
        gone = any(f["diverged"] for f in per_fold)
        rows.append(
            {"config": i, "params": asdict(cfg), "summary": summary, "folds": per_fold, "diverged": gone}
        )

    def key(row: dict) -> tuple:
        s = row["summary"]
        score = s[metric] if math.isfinite(s[metric]) else -math.inf
        return (row["diverged"], -score, s["val_loss"], row["config"])

    rows.sort(key=key)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def train_head_command(
    cache: Path,
    cfg: HeadConfig,
    *,
    folds: int,
    test: str,
    holdout: float,
    seed: int,
    device: str,
    out: str = "runs/best",
) -> str:
    """The exact `fastall train-head` command that reproduces one configuration's folds."""
    parts = [
        "fastall",
        "train-head",
        shlex.quote(str(cache)),
        "--folds",
        str(folds),
        "--out",
        out,
        "--test",
        test,
        "--holdout",
        repr(holdout),
        "--epochs",
        str(cfg.epochs),
        "--batch-size",
        str(cfg.batch_size),
        "--lr",
        repr(cfg.lr),
        "--weight-decay",
        repr(cfg.weight_decay),
        "--dropout",
        repr(cfg.dropout),
        "--hidden",
        str(cfg.hidden),
    ]
    if cfg.patience is not None:
        parts += ["--patience", str(cfg.patience)]
    parts += [
        "--plateau-factor",
        repr(cfg.plateau_factor),
        "--plateau-patience",
        str(cfg.plateau_patience),
        "--class-weight",
        cfg.class_weight,
        "--standardize" if cfg.standardize else "--no-standardize",
        "--seed",
        str(seed),
        "--device",
        device,
    ]
    return " ".join(parts)


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
        writer = csv.DictWriter(fh, fieldnames=cols)
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
    for row in r["configs"][:top]:
        s, p = row["summary"], row["params"]
        params = (f"{p[n]:.3g}" if isinstance(p[n], float) else str(p[n]) for n in varying)
        table.add_row(
            str(row["rank"]) + (" diverged" if row.get("diverged") else ""),
            *params,
            fmt(s[metric], metric == "accuracy", s[f"{metric}_std"]),
            fmt(s["accuracy"], True),
            fmt(s["f1"], False),
            fmt(s["auc"], False),
            fmt(s["val_loss"], False),
        )
    console.print(table)
    if len(r["configs"]) > top:
        console.print(f"... {len(r['configs']) - top} more in {result.out / 'results.csv'}")
    t = r["timings"]
    console.print(
        f"{len(r['configs'])} configurations in {t['train_s']:.1f} s "
        f"({t['configs_per_s']:.2f}/s) on "
        f"{r['device']} ({r['precision']}); results in {result.out}"
    )
    console.print("Best configuration, as a train-head run:")
    console.print(r["best"]["command"], soft_wrap=True, highlight=False, markup=False)
