"""The files of a train-head run: metrics.json's content, head.pt, folds.csv and predictions.csv.

metrics.json's ``history`` (one value per epoch run, ``best_epoch`` 1-based: the epoch whose parameters the
head keeps)::

    {"folds": [{"fold": i, "best_epoch": k, "epochs_run": n,
                "train_loss": [...], "val_loss": [...], "val_accuracy": [...], "lr": [...]}, ...],
     "final": {"best_epoch": k, "epochs_run": n, "train_loss": [...], "val_loss": [], "val_accuracy": [],
               "lr": [...]}}

``train_loss`` is the mean training loss over the epoch's steps (class-weighted cross-entropy with dropout, as
trained), ``val_loss`` and ``val_accuracy`` are on view 0 of the fold's validation rows (the final head has
none), ``lr`` is the learning rate the epoch trained with.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastall import __version__
from fastall.features.cache import FeatureCache
from fastall.head import HEAD_FORMAT, HEAD_VERSION, Head
from fastall.reporting.provenance import command_line
from fastall.system import csvsafe
from fastall.system.jsonable import plain
from fastall.system.runfolder import atomic_folder
from fastall.training.config import HISTORY_KEYS, HeadConfig, HeadResult
from fastall.training.divergence import diverged, metrics_or_nan
from fastall.training.metrics import PAPER_CV, PAPER_TEST, classification_metrics, summarize
from fastall.training.patients import run_patient_level
from fastall.training.prepared import Prepared
from fastall.training.splits import fold_table
from fastall.training.uncertainty import metrics_with_ci, pooled_with_ci

RUN_FORMAT, RUN_VERSION = "fastall-run", 1


def publish_run(
    out: Path,
    prep: Prepared,
    results: list[HeadResult],
    metrics: dict[str, Any],
    options: Any,
    timings: dict[str, float],
    write_models: Callable[[Path], None],
) -> Any:
    """Write the run folder ``out`` and publish it by one rename: ``write_models(folder)`` (head.pt and what
    goes with it), folds.csv, predictions.csv, the patient-level metrics, ``timings`` (``started``: the
    run's ``perf_counter`` start; ``load_cache_s``, ``train_s``, ``probe_s``) with the write and total time,
    metrics.json and, with ``options.report``, the report (returned; None without one)."""
    t0, made = time.perf_counter(), None
    with atomic_folder(out, overwrite=options.overwrite) as tmp:
        write_models(tmp)
        write_folds_csv(tmp / "folds.csv", prep)
        write_run_predictions(tmp / "predictions.csv", prep, results, options.tta)
        metrics["patient_level"] = run_patient_level(
            tmp / "predictions.csv", prep.cache.class_names, prep.positive.name
        )
        started = timings.pop("started")
        metrics["timings"] = {
            **timings,
            "write_s": time.perf_counter() - t0,
            "total_s": time.perf_counter() - started,
        }
        (tmp / "metrics.json").write_text(json.dumps(plain(metrics), indent=2, allow_nan=False) + "\n")
        if options.report:  # imported here: matplotlib only when a report is made
            from fastall.reporting.run_report import write_report

            made = write_report(tmp, shown_as=out.absolute())
    return made


EXTRACT_PRECISION_ATTRS = ("amp_dtype", "precision_requested", "precision_reason", "cpu_capability_label")


def is_cnmc(cache: FeatureCache) -> bool:
    """A cache of the C-NMC 2019 tree (its classes and folds): only then do the paper's tables apply."""
    return list(cache.class_names) == ["hem", "all"] and any(
        str(s).startswith("fold_") for s in np.unique(cache.sources)
    )


def run_metrics(prep: Prepared, results: list[HeadResult], run_config: dict, tta: bool) -> dict[str, Any]:
    """metrics.json without its timings."""
    labels, k, pos = prep.cache.labels, prep.data.classes, prep.positive.index
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
            **metrics_or_nan(labels[val], r.probs["val"], k, positive=pos),
            "diverged": diverged(r),
        }
        if tta:
            row["tta"] = metrics_or_nan(labels[val], r.probs["val_tta"], k, positive=pos)
            fold_tta.append(row["tta"])
        fold_rows.append(row)
    final = next(r for r in results if r.final)
    pooled = [
        (prep.splits.folds[r.fold][1], r.probs["val"]) for r in results if not r.final and not diverged(r)
    ]
    summary, seed = summarize(fold_rows), run_config["seed"]
    if tta:
        summary["tta"] = summarize(fold_tta)
    return {
        "command": command_line(),
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
            "data_root": prep.cache.attrs.get("data_root"),
        },
        "classes": {"names": list(prep.cache.class_names), "positive": prep.positive.record()},
        "dataset": {"cnmc": is_cnmc(prep.cache)},
        "config": run_config,
        "device": prep.device.type,
        "precision": prep.precision,
        "precision_decision": prep.precision_record,
        "extract_precision": {k: prep.cache.attrs.get(k) for k in EXTRACT_PRECISION_ATTRS},
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
        "pooled": pooled_with_ci(
            labels, prep.cache.patients, pooled, k, seed=run_config["seed"], positive=pos
        )
        if pooled
        else None,
        "final_head": {
            "epochs": final.best_epoch,
            "lr_history": final.lr_history,
            "train_images": int(prep.splits.pool.size),
        },
        "test": _test_metrics(prep, results, tta, seed),
        "paper": {"cv": PAPER_CV, "test": PAPER_TEST} if is_cnmc(prep.cache) else None,
        "history": history(results),
    }


def history(results: list[HeadResult]) -> dict[str, Any]:
    """metrics.json's ``history`` (module docstring): every fold head's, then the final head's."""

    def entry(r: HeadResult) -> dict[str, Any]:
        return {
            "best_epoch": r.best_epoch,
            "epochs_run": r.epochs_run,
            **{k: r.history[k] for k in HISTORY_KEYS},
        }

    folds = [{"fold": r.fold, **entry(r)} for r in results if not r.final]
    final = next((entry(r) for r in results if r.final), None)
    return {"folds": folds, "final": final}


def _test_metrics(prep: Prepared, results: list[HeadResult], tta: bool, seed: int = 0) -> dict | None:
    rows = prep.splits.test
    if rows.size == 0:
        return None
    y, k, patients = prep.cache.labels[rows], prep.data.classes, prep.cache.patients[rows]
    pos = prep.positive.index
    final = next(r for r in results if r.final)
    folds = [r for r in results if not r.final and not diverged(r)] or [final]  # a diverged head never votes
    ens = np.mean([r.probs["test"] for r in folds], 0)
    out = {
        "images": int(rows.size),
        "final": metrics_with_ci(y, final.probs["test"], patients, k, seed=seed, positive=pos),
        "ensemble": metrics_with_ci(y, ens, patients, k, seed=seed, positive=pos),
    }
    if tta:
        ens_tta = np.mean([r.probs["test_tta"] for r in folds], 0)
        out["final_tta"] = classification_metrics(y, final.probs["test_tta"], k, positive=pos)
        out["ensemble_tta"] = classification_metrics(y, ens_tta, k, positive=pos)
    return out


def write_head(
    path: Path, prep: Prepared, results: list[HeadResult], head_config: HeadConfig, run_config: dict
) -> None:
    """head.pt: the final head (``head_config``'s shape) and the fold heads, with the run's ``run_config``."""
    final = next(r for r in results if r.final)
    head = Head(prep.data.dim, head_config.hidden, head_config.dropout, prep.data.classes)
    head.load_state_dict(final.state)
    blob = {
        "format": HEAD_FORMAT,
        "format_version": HEAD_VERSION,
        "state_dict": head.state_dict(),
        "head_config": head.config(),
        "class_names": list(prep.cache.class_names),
        "positive_class": prep.positive.name,
        "cache_key": prep.cache.key,
        "cache_path": str(prep.cache.path.absolute()),
        "key_params": plain(prep.cache.key_params),
        "train_config": plain(run_config),
        "final_epochs": final.best_epoch,
        "fold_state_dicts": [r.state for r in results if not r.final],
    }
    torch.save(blob, path)


def write_folds_csv(path: Path, prep: Prepared) -> None:
    rows = fold_table(prep.splits, prep.cache.labels, prep.cache.patients, prep.cache.class_names)
    write_csv(path, ["patient", "class", "images", "fold"], rows)


def probability_columns(class_names: list[str], prefix: str = "") -> list[str]:
    """``p_<class>`` for every class (``prefix``: ``ensemble_``, ``tta_``, ``ensemble_tta_``)."""
    return [f"{prefix}p_{name}" for name in class_names]


PREDICTION_PREFIXES = ("", "ensemble_", "tta_", "ensemble_tta_")


def write_run_predictions(path: Path, prep: Prepared, results: list[HeadResult], tta: bool) -> None:
    """Out-of-fold validation predictions of the pool, and the final head and ensemble on the test set (a
    diverged fold head's rows are left out and it takes no part in the ensemble). Columns: ``path``,
    ``patient``, ``true_class``, ``split``, ``fold``, ``predicted_class`` and ``p_<class>`` of every class
    (the fold head out of fold, the final head on test), then ``ensemble_p_<class>`` (test rows) and, with
    TTA, ``tta_p_<class>`` and ``ensemble_tta_p_<class>``."""
    c = prep.cache
    prefixes = PREDICTION_PREFIXES if tta else PREDICTION_PREFIXES[:2]
    fields = ["path", "patient", "true_class", "split", "fold", "predicted_class"]
    fields += [col for prefix in prefixes for col in probability_columns(c.class_names, prefix)]
    lines = []
    results = [r for r in results if r.final or not diverged(r)]
    for r in (r for r in results if not r.final):
        rows = prep.splits.folds[r.fold][1]
        probs = {"": r.probs["val"], **({"tta_": r.probs["val_tta"]} if tta else {})}
        lines += _lines(c, rows, "val", r.fold, probs)
    if prep.splits.test.size:
        final = next(r for r in results if r.final)
        folds = [r for r in results if not r.final]
        probs = {"": final.probs["test"], "ensemble_": np.mean([r.probs["test"] for r in folds], 0)}
        if tta:
            probs["tta_"] = final.probs["test_tta"]
            probs["ensemble_tta_"] = np.mean([r.probs["test_tta"] for r in folds], 0)
        lines += _lines(c, prep.splits.test, "test", "", probs)
    write_csv(path, fields, sorted(lines, key=lambda d: d["path"]))


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    """A CSV with the given columns; missing cells are empty."""
    with open(path, "w", newline="") as fh:
        writer = csvsafe.dict_writer(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _lines(
    c: FeatureCache, rows: np.ndarray, split: str, fold: int | str, probs: dict[str, np.ndarray]
) -> list[dict]:
    pred = probs[""].argmax(1)
    out = []
    for j, i in enumerate(rows):
        line = {
            "path": c.paths[i],
            "patient": c.patients[i],
            "true_class": c.class_names[int(c.labels[i])],
            "split": split,
            "fold": fold,
            "predicted_class": c.class_names[int(pred[j])],
        }
        for prefix, prob in probs.items():
            line.update(
                {f"{prefix}p_{name}": f"{float(prob[j, k]):.9g}" for k, name in enumerate(c.class_names)}
            )
        out.append(line)
    return out
