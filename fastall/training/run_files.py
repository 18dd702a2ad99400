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

import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fastall import __version__
from fastall.features.cache import FeatureCache
from fastall.head import HEAD_FORMAT, HEAD_VERSION, Head
from fastall.reporting.provenance import command_line
from fastall.system import csvsafe
from fastall.system.jsonable import plain
from fastall.training.config import HISTORY_KEYS, HeadConfig, HeadResult
from fastall.training.divergence import diverged, metrics_or_nan
from fastall.training.metrics import PAPER_CV, PAPER_TEST, classification_metrics, summarize
from fastall.training.splits import fold_table
from fastall.training.uncertainty import metrics_with_ci, pooled_with_ci

if TYPE_CHECKING:
    from fastall.training.train_head import Prepared

RUN_FORMAT, RUN_VERSION = "fastall-run", 1


EXTRACT_PRECISION_ATTRS = ("amp_dtype", "precision_requested", "precision_reason", "cpu_capability_label")


def run_metrics(prep: Prepared, results: list[HeadResult], config: dict, tta: bool) -> dict[str, Any]:
    """metrics.json without its timings."""
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
    pooled = [
        (prep.splits.folds[r.fold][1], r.probs["val"]) for r in results if not r.final and not diverged(r)
    ]
    summary = summarize(fold_rows)
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
        "config": config,
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
        "pooled": pooled_with_ci(labels, prep.cache.patients, pooled, k, seed=config["seed"])
        if pooled
        else None,
        "final_head": {
            "epochs": final.best_epoch,
            "lr_history": final.lr_history,
            "train_images": int(prep.splits.pool.size),
        },
        "test": _test_metrics(prep, results, tta, config["seed"]),
        "paper": {"cv": PAPER_CV, "test": PAPER_TEST},
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
    final = next(r for r in results if r.final)
    folds = [r for r in results if not r.final and not diverged(r)] or [final]  # a diverged head never votes
    out = {
        "images": int(rows.size),
        "final": metrics_with_ci(y, final.probs["test"], patients, k, seed=seed),
        "ensemble": metrics_with_ci(y, np.mean([r.probs["test"] for r in folds], 0), patients, k, seed=seed),
    }
    if tta:
        out["final_tta"] = classification_metrics(y, final.probs["test_tta"], k)
        out["ensemble_tta"] = classification_metrics(y, np.mean([r.probs["test_tta"] for r in folds], 0), k)
    return out


def write_head(path: Path, prep: Prepared, results: list[HeadResult], cfg: HeadConfig, config: dict) -> None:
    final = next(r for r in results if r.final)
    head = Head(prep.data.dim, cfg.hidden, cfg.dropout, prep.data.classes)
    head.load_state_dict(final.state)
    blob = {
        "format": HEAD_FORMAT,
        "format_version": HEAD_VERSION,
        "state_dict": head.state_dict(),
        "head_config": head.config(),
        "class_names": list(prep.cache.class_names),
        "cache_key": prep.cache.key,
        "cache_path": str(prep.cache.path.absolute()),
        "key_params": plain(prep.cache.key_params),
        "train_config": plain(config),
        "final_epochs": final.best_epoch,
        "fold_state_dicts": [r.state for r in results if not r.final],
    }
    torch.save(blob, path)


def write_folds_csv(path: Path, prep: Prepared) -> None:
    rows = fold_table(prep.splits, prep.cache.labels, prep.cache.patients, prep.cache.class_names)
    with open(path, "w", newline="") as fh:
        writer = csvsafe.dict_writer(fh, fieldnames=["patient", "class", "images", "fold"])
        writer.writeheader()
        writer.writerows(rows)


def _score(prob: np.ndarray) -> np.ndarray:
    """P(class 1) for two classes (the positive class, ALL), else the probability of the predicted class."""
    return prob[:, 1] if prob.shape[1] == 2 else prob.max(1)


def write_predictions(path: Path, prep: Prepared, results: list[HeadResult], tta: bool) -> None:
    """Out-of-fold validation predictions of the pool, and the final head and ensemble on the test set (a
    diverged fold head's rows are left out and it takes no part in the ensemble)."""
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
    results = [r for r in results if r.final or not diverged(r)]
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
        writer = csvsafe.dict_writer(fh, fieldnames=fields, restval="")
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
