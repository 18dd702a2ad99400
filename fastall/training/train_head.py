"""`fastall train-head`: patient-level k-fold CV of the head from the feature cache, plus test metrics.

One stack trains the k fold heads and the final head (all non-test images, kept at the median of the folds'
best-epoch counts) together. Test metrics come from the final head and from the ensemble of fold heads.
Outputs (written atomically): metrics.json, folds.csv, predictions.csv, head.pt.
"""

from __future__ import annotations

import csv
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from fastall import __version__
from fastall.errors import FastallError
from fastall.features.cache import FeatureCache, read_cache
from fastall.head import HEAD_FORMAT, HEAD_VERSION, Head
from fastall.system.runfolder import atomic_folder, check_target
from fastall.training.config import HeadConfig, HeadResult, StackData
from fastall.training.divergence import check_divergence, diverged, metrics_or_nan
from fastall.training.engine import resolve_device, resolve_precision, train_stacks
from fastall.training.hygiene import check_rows, content_leak_notes
from fastall.training.metrics import PAPER_CV, PAPER_TEST, json_safe, summarize
from fastall.training.splits import Splits, audit_splits, fold_table, make_splits

RUN_FORMAT, RUN_VERSION = "fastall-run", 1


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
    notes: list[str] = field(default_factory=list)


def prepare(
    cache_path: str | Path,
    *,
    folds: int,
    test: str,
    holdout: float,
    seed: int,
    device: str,
    precision: str = "auto",
    dedupe: bool = False,
) -> Prepared:
    """Read the cache once (float16), split by patient, audit, and put the features on the device
    (``dedupe``: one copy of byte-identical images, :mod:`fastall.training.hygiene`)."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    t0 = time.perf_counter()
    cache = read_cache(cache_path)
    if cache.n_images == 0:
        raise FastallError(f"{cache.path}: the cache holds no images")
    cache, notes = check_rows(cache, dedupe=dedupe)
    splits = make_splits(
        cache.labels,
        cache.patients,
        cache.sources,
        folds=folds,
        test=test,
        holdout=holdout,
        seed=seed,
        class_names=cache.class_names,
    )
    audit = audit_splits(splits, cache.patients, cache.content_hashes)
    notes += content_leak_notes(audit)
    features = torch.from_numpy(np.ascontiguousarray(cache.features))
    features = features.to(dev) if dev.type != "cpu" else features
    data = StackData(features, cache.labels, len(cache.class_names), splits.folds, splits.pool, splits.test)
    return Prepared(cache, splits, audit, data, dev, prec, time.perf_counter() - t0, notes)


@dataclass
class RunResult:
    """What train-head wrote: the run folder and the content of its metrics.json."""

    out: Path
    metrics: dict[str, Any]

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
    *,
    folds: int = 5,
    test: str = "holdout",
    holdout: float = 0.1,
    epochs: int = 5,
    batch_size: int = 32,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    dropout: float = 0.5,
    hidden: int = 512,
    patience: int | None = None,
    plateau_factor: float = 0.1,
    plateau_patience: int = 2,
    class_weight: str = "none",
    standardize: bool = True,
    tta: bool = False,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    console: Console | None = None,
    dedupe: bool = False,
) -> RunResult:
    """Cross-validate one head configuration by patient and write the run folder ``out``.

    Defaults are the paper's (Adam 1e-4, batch 32, 5 epochs, dropout 0.5, 512 hidden) plus ReduceLROnPlateau
    (factor 0.1, patience 2). Without ``patience`` every fold keeps its last epoch; with it, training stops
    after ``patience`` epochs without a lower validation loss and the best epoch is restored.
    """
    t_start = time.perf_counter()
    cfg = HeadConfig(
        lr=lr,
        weight_decay=weight_decay,
        dropout=dropout,
        hidden=hidden,
        epochs=epochs,
        batch_size=batch_size,
        patience=patience,
        plateau_factor=plateau_factor,
        plateau_patience=plateau_patience,
        class_weight=class_weight,
        standardize=standardize,
    ).check()
    out = Path(out)
    check_target(out.absolute(), overwrite)
    split = {"folds": folds, "test": test, "holdout": holdout, "seed": seed}
    prep = prepare(cache_path, **split, device=device, precision=precision, dedupe=dedupe)
    warn = None if console is None else lambda m: console.print(f"[yellow]Warning:[/] {m}", soft_wrap=True)
    for note in prep.notes if warn else ():
        warn(note)
    t0 = time.perf_counter()
    with _EpochProgress(progress, console, epochs) as report:
        results = train_stacks(
            prep.data, [cfg], seed=seed, precision=prep.precision, final=True, tta=tta, progress=report
        )
    train_s = time.perf_counter() - t0
    check_divergence(results, cfg.lr, cfg.weight_decay, warn)
    config = {
        "folds": folds,
        "test": test,
        "holdout": holdout,
        **asdict(cfg),
        "tta": tta,
        "seed": seed,
        "device": prep.device.type,
        "precision": prep.precision,
        **({"dedupe": True} if dedupe else {}),
    }
    metrics = _metrics(prep, results, config, tta)
    metrics["warnings"] = prep.notes
    t0 = time.perf_counter()
    with atomic_folder(out, overwrite=overwrite) as tmp:
        _write_head(tmp / "head.pt", prep, results, cfg, config)
        _write_folds_csv(tmp / "folds.csv", prep)
        _write_predictions(tmp / "predictions.csv", prep, results, tta)
        metrics["timings"] = {
            "load_cache_s": prep.load_s,
            "train_s": train_s,
            "write_s": time.perf_counter() - t0,
            "total_s": time.perf_counter() - t_start,
        }
        (tmp / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")
    return RunResult(out.absolute(), metrics)


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


def _metrics(prep: Prepared, results: list[HeadResult], config: dict, tta: bool) -> dict[str, Any]:
    labels, k = prep.cache.labels, prep.data.classes
    fold_rows, fold_tta = [], []
    for r in (r for r in results if not r.final):
        val = prep.splits.folds[r.fold][1]
        row = {
            "fold": r.fold,
            "train_images": int(prep.splits.folds[r.fold][0].size),
            "val_images": int(val.size),
            "best_epoch": r.best_epoch,
            "epochs_run": r.epochs_run,
            "val_loss": r.val_loss,
            "val_loss_history": r.val_loss_history,
            "lr_history": r.lr_history,
            **metrics_or_nan(labels[val], r.probs["val"], k),
            "diverged": diverged(r),
        }
        if tta:
            row["tta"] = metrics_or_nan(labels[val], r.probs["val_tta"], k)
            fold_tta.append(row["tta"])
        fold_rows.append(row)
    final = next(r for r in results if r.final)
    summary = summarize(fold_rows)
    if tta:
        summary["tta"] = summarize(fold_tta)
    return {
        "format": RUN_FORMAT,
        "format_version": RUN_VERSION,
        "fastall_version": __version__,
        "cache": {
            "path": str(prep.cache.path.absolute()),
            "key": prep.cache.key,
            "key_params": prep.cache.key_params,
            "images": prep.cache.n_images,
            "views": prep.cache.n_views,
            "dim": prep.data.dim,
            "class_names": prep.cache.class_names,
        },
        "config": config,
        "device": prep.device.type,
        "precision": prep.precision,
        "environment": {"torch": torch.__version__, "python": platform.python_version()},
        "splits": {
            "test_mode": prep.splits.test_mode,
            "pool_images": int(prep.splits.pool.size),
            "test_images": int(prep.splits.test.size),
            "test_patients": len(set(prep.cache.patients[prep.splits.test])),
            "audit": prep.audit,
        },
        "folds": fold_rows,
        "summary": summary,
        "final_head": {
            "epochs": final.best_epoch,
            "lr_history": final.lr_history,
            "train_images": int(prep.splits.pool.size),
        },
        "test": _test_metrics(prep, results, tta),
        "paper": {"cv": PAPER_CV, "test": PAPER_TEST},
    }


def _test_metrics(prep: Prepared, results: list[HeadResult], tta: bool) -> dict | None:
    rows = prep.splits.test
    if rows.size == 0:
        return None
    y, k = prep.cache.labels[rows], prep.data.classes
    final = next(r for r in results if r.final)
    folds = [r for r in results if not r.final]
    out = {
        "images": int(rows.size),
        "final": metrics_or_nan(y, final.probs["test"], k),
        "ensemble": metrics_or_nan(y, np.mean([r.probs["test"] for r in folds], 0), k),
    }
    if tta:
        out["final_tta"] = metrics_or_nan(y, final.probs["test_tta"], k)
        out["ensemble_tta"] = metrics_or_nan(y, np.mean([r.probs["test_tta"] for r in folds], 0), k)
    return out


def _write_head(path: Path, prep: Prepared, results: list[HeadResult], cfg: HeadConfig, config: dict) -> None:
    final = next(r for r in results if r.final)
    sizes = {"in_features": prep.data.dim, "hidden": cfg.hidden, "classes": prep.data.classes}
    head = Head.from_state({**sizes, "dropout": cfg.dropout}, final.state)
    blob = {
        "format": HEAD_FORMAT,
        "format_version": HEAD_VERSION,
        "state_dict": head.state_dict(),
        "head_config": head.config(),
        "class_names": list(prep.cache.class_names),
        "cache_key": prep.cache.key,
        "cache_path": str(prep.cache.path.absolute()),
        "key_params": json_safe(prep.cache.key_params),
        "train_config": json_safe(config),
        "final_epochs": final.best_epoch,
        "fold_state_dicts": [r.state for r in results if not r.final],
    }
    torch.save(blob, path)


def _write_folds_csv(path: Path, prep: Prepared) -> None:
    rows = fold_table(prep.splits, prep.cache.labels, prep.cache.patients, prep.cache.class_names)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["patient", "class", "images", "fold"])
        writer.writeheader()
        writer.writerows(rows)


def _score(prob: np.ndarray) -> np.ndarray:
    """P(class 1) for two classes (the positive class, ALL), else the probability of the predicted class."""
    return prob[:, 1] if prob.shape[1] == 2 else prob.max(1)


def _write_predictions(path: Path, prep: Prepared, results: list[HeadResult], tta: bool) -> None:
    """Out-of-fold validation predictions of the pool, and the final head and ensemble on the test set."""
    c = prep.cache
    fields = [
        "path",
        "patient",
        "label",
        "split",
        "fold",
        "prediction",
        "probability",
        "probability_ensemble",
    ]
    fields += ["probability_tta", "probability_ensemble_tta"] if tta else []
    lines = []
    for r in (r for r in results if not r.final):
        rows = prep.splits.folds[r.fold][1]
        extra = {"probability_tta": _score(r.probs["val_tta"])} if tta else {}
        cols = {"probability": _score(r.probs["val"]), **extra}
        lines += _lines(c, rows, "val", r.fold, r.probs["val"], cols)
    if prep.splits.test.size:
        final = next(r for r in results if r.final)
        ens = np.mean([r.probs["test"] for r in results if not r.final], 0)
        cols = {"probability": _score(final.probs["test"]), "probability_ensemble": _score(ens)}
        if tta:
            cols["probability_tta"] = _score(final.probs["test_tta"])
            cols["probability_ensemble_tta"] = _score(
                np.mean([r.probs["test_tta"] for r in results if not r.final], 0)
            )
        lines += _lines(c, prep.splits.test, "test", "", final.probs["test"], cols)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(sorted(lines, key=lambda d: d["path"]))


def _lines(
    c: FeatureCache,
    rows: np.ndarray,
    split: str,
    fold: int | str,
    prob: np.ndarray,
    cols: dict[str, np.ndarray],
) -> list[dict]:
    pred = prob.argmax(1)
    return [
        {
            "path": c.paths[i],
            "patient": c.patients[i],
            "label": c.class_names[int(c.labels[i])],
            "split": split,
            "fold": fold,
            "prediction": c.class_names[int(pred[j])],
            **{name: f"{float(v[j]):.6f}" for name, v in cols.items()},
        }
        for j, i in enumerate(rows)
    ]


def print_run_summary(result: RunResult, console: Console | None = None) -> None:
    """The leakage audit, the per-fold table with mean ± std and peak, and the test metrics, each beside
    the paper's Tables II and III."""
    from fastall.reporting.tables import print_run

    print_run(result.metrics, result.out, console or Console(stderr=True))
