"""`fastall finetune`: patient-level CV of the stage after the cut and the head, from a maps store.

The folds, test split, leakage audit, probe baseline, metrics with CIs, predictions, patient-level metrics
and report are train-head's (:mod:`fastall.training.train_head`, :mod:`fastall.training.run_outputs`); only
the models differ. Per fold (default preset): a net started at the probe is trained on each split of an inner
patient K-fold of the fold's training patients with early stopping on its validation patients (``--tune``:
each configuration, the lowest mean inner loss wins), then refitted on all the fold's training rows for the
median best epoch (0 keeps the start: the probe). The final model trains on
all non-test rows for the median of the folds' epochs. ``head.pt`` holds the final head, the fine-tuned
stage and its sha256 (``finetune``), so the end-to-end path rebuilds image -> front -> stage -> head.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastall.errors import FastallError
from fastall.features.backbone import state_dict_sha256
from fastall.features.cut import STAGE_FEATURES, Cut, recorded_cut, trained_stages
from fastall.features.maps import MapStore, open_maps
from fastall.finetune.config import FinetuneConfig, FinetunePreset, finetune_preset
from fastall.finetune.engine import Net, fit, make_net, pooled_features, predict
from fastall.system.devices import resolve_device
from fastall.system.events import Reporter, silent
from fastall.system.files import atomic_torch_save
from fastall.system.jsonable import plain
from fastall.system.runfolder import check_target
from fastall.training import run_outputs
from fastall.training.config import HeadConfig, HeadResult, TrainOptions
from fastall.training.grid import expand, parse_grid
from fastall.training.prepared import Prepared, prepare
from fastall.training.presets import protocol_record
from fastall.training.probe import probe_cache
from fastall.training.run_warnings import verdict_of
from fastall.training.selection import inner_splits
from fastall.training.streams import fold_statistics
from fastall.training.train_head import RunResult, baseline, linear_fit

FINETUNE_FORMAT = "fastall-finetune"


@dataclass
class _Job:
    """What every fold's training shares."""

    prep: Prepared
    store: MapStore
    cut: Cut
    to_store: np.ndarray
    views: list[int]
    preset: FinetunePreset
    seed: int
    reporter: Reporter
    device: torch.device

    def rows(self, rows: np.ndarray) -> np.ndarray:
        return self.to_store[np.asarray(rows, dtype=np.int64)]

    def net(self, config: FinetuneConfig, rows: np.ndarray, fold: int, linear: Any = None) -> Net:
        feats = torch.from_numpy(np.ascontiguousarray(self.prep.cache.features))
        stats = fold_statistics(feats, [np.asarray(rows)], self.views)
        if linear is None and self.preset.head_init == "probe":
            linear = linear_fit(self.prep, self.seed)(np.asarray(rows))
        net = make_net(self.cut.stage, config, self.prep.data.classes, stats, self.seed + fold, linear)
        return net.to(self.device)

    def fit(self, config: FinetuneConfig, rows: np.ndarray, fold: int, val: Any = None, epochs: Any = None):
        labels = self.store.cache.labels
        with self.reporter.task(f"finetune fold {fold}", epochs or config.epochs) as advance:
            return fit(
                self.net(config, rows, fold),
                self.store,
                labels,
                self.rows(rows),
                config,
                views=self.views,
                seed=self.seed * 1000 + fold,
                val=None if val is None else self.rows(val),
                epochs=epochs,
                progress=advance,
            )


def _choose(job: _Job, configs: list[FinetuneConfig], rows: np.ndarray, fold: int) -> tuple[int, int, list]:
    """The configuration with the lowest mean validation loss over an inner patient K-fold of ``rows``
    (``inner_folds``; 1: one inner split), its median best epoch count (0: keep the start, the probe), and
    every configuration's mean loss."""
    prep = job.prep
    try:
        splits = inner_splits(
            prep.cache.labels,
            prep.cache.patients,
            rows,
            seed=job.seed,
            fold=fold,
            folds=job.preset.inner_folds,
            class_names=prep.cache.class_names,
        )
    except FastallError as err:
        if len(configs) > 1:
            raise
        job.reporter.warn("selection", f"{err}: fold {fold} trains a fixed schedule, without early stopping")
        return 0, configs[0].epochs, [math.inf]
    losses, epochs = [], []
    for c in configs:
        fits = [job.fit(c, tr, fold, val=va) for tr, va in splits]
        losses.append(float(np.mean([f.val_loss if f.val_loss is not None else np.inf for f in fits])))
        epochs.append(int(np.median([f.best_epoch for f in fits])))
    best = int(np.argmin(losses))
    return best, epochs[best], losses


def _result(job: _Job, fold: int, final: bool, trained: Any, rows_val: np.ndarray | None) -> HeadResult:
    prep = job.prep
    probs = {"test": predict(trained.net, job.store, job.rows(prep.splits.test))}
    if rows_val is not None:
        probs["val"] = predict(trained.net, job.store, job.rows(rows_val))
    h = trained.history
    return HeadResult(
        config=0,
        fold=fold,
        final=final,
        state={k: v.detach().cpu().clone() for k, v in trained.net.head.state_dict().items()},
        best_epoch=trained.best_epoch,
        epochs_run=trained.epochs_run,
        val_loss=trained.val_loss,
        val_loss_history=list(h.get("val_loss", [])),
        lr_history=list(h.get("lr", [])),
        probs=probs,
        history={k: list(h.get(k, [])) for k in ("train_loss", "val_loss", "val_accuracy", "lr")},
    )


def _train(job: _Job, configs: list[FinetuneConfig]) -> tuple[list[HeadResult], Net, FinetuneConfig, dict]:
    """Every fold's model and the final one; returns the results, the final net, its configuration and the
    selection record."""
    prep, results, chosen = job.prep, [], []
    for fold, (tr, va) in enumerate(prep.splits.folds):
        if job.preset.selection == "inner":
            best, epochs, losses = _choose(job, configs, tr, fold)
            trained = job.fit(configs[best], tr, fold, epochs=epochs)
            chosen.append({"fold": fold, "config": best, "epochs": epochs, "inner_val_loss": losses})
        else:
            trained = job.fit(configs[0], tr, fold, val=va)
        results.append(_result(job, fold, False, trained, va))
    if chosen:
        best = int(np.bincount([c["config"] for c in chosen]).argmax())
        epochs = int(np.median([c["epochs"] for c in chosen if c["config"] == best]))
    else:
        best, epochs = 0, configs[0].epochs
    final = job.fit(configs[best], prep.splits.pool, len(prep.splits.folds), epochs=epochs)
    results.append(_result(job, len(prep.splits.folds), True, final, None))
    record = {
        "selection": job.preset.selection,
        "folds": chosen,
        "final_config": best,
        "final_epochs": epochs,
    }
    return results, final.net, configs[best], record


def _store_rows(prep: Prepared, store: MapStore) -> np.ndarray:
    row_of = {p: i for i, p in enumerate(store.cache.paths)}
    return np.array([row_of[p] for p in prep.cache.paths], dtype=np.int64)


def finetune(
    store_path: str | Path,
    out: str | Path,
    config: FinetuneConfig | None = None,
    options: TrainOptions | None = None,
    *,
    preset: str = "default",
    train: str | None = None,
    weights_path: str | None = None,
    reporter: Reporter | None = None,
) -> RunResult:
    """Fine-tune the stage after the store's cut and the head by patient-level CV; write the run folder
    ``out`` (train-head's files, plus the stage in ``head.pt``). ``config``: the configuration (default:
    ``preset``'s); ``preset``: ``default`` or ``paper``, the protocol; ``options``: folds, test split, seed,
    device, ``tune`` (a grid of FinetuneConfig fields); ``train``: the stages after the cut."""
    t_start, reporter = time.perf_counter(), reporter or silent()
    options = options or TrainOptions()
    preset_config, p = finetune_preset(preset, {})
    base = (config or preset_config).check()
    options = replace(
        options, train_views=p.train_views, selection=p.selection, head_init=p.head_init, preset=p.name
    )
    configs = [base]
    if options.tune:
        if p.selection != "inner":
            raise FastallError("--tune chooses on an inner split: use --preset default")
        names = {h.name: h for h in FinetuneConfig.hparams()}
        configs = [c.check() for c in expand(parse_grid(options.tune, flag="--tune", names=names), base)]
    store = open_maps(store_path)
    after = ",".join(trained_stages(store.layer))
    if train is not None and train.replace(" ", "") != after:
        raise FastallError(
            f"--train {train}: {store.path} holds maps after {store.layer}, so the stages it can train are "
            f"{after} (make a store with `extract --maps` at an earlier layer to train more)"
        )
    out = Path(out)
    check_target(out.absolute(), options.overwrite, run_outputs.RUN_FORMAT)
    prep = prepare(store_path, replace(options, device="cpu", precision="fp32"))
    cut = recorded_cut(store.cache.key_params, store.cache.attrs, weights_path)
    first = 1 if p.train_views == "augmented" and store.map_views > 1 else 0
    views, dev = list(range(first, store.map_views)), resolve_device(options.device)
    job = _Job(prep, store, cut, _store_rows(prep, store), views, p, options.seed, reporter, dev)
    for code, text in ((w["code"], w["text"]) for w in prep.warnings.items):
        reporter.warn(code, text)
    t0 = time.perf_counter()
    probe = probe_cache(prep.cache, prep.splits, positive=prep.positive.index) if options.probe else None
    probe_s, t0 = time.perf_counter() - t0, time.perf_counter()
    results, net, chosen, selection = _train(job, configs)
    train_s = time.perf_counter() - t0
    run_config = {
        "folds": options.folds,
        "test": options.test,
        "holdout": options.holdout,
        **asdict(chosen),
        "standardize": True,
        "tta": False,
        "seed": options.seed,
        "device": dev.type,
        "precision": "fp32",
        "train_views": p.train_views,
        "selection": p.selection,
        "head_init": p.head_init,
        "positive": prep.positive.name,
        "preset": p.name,
    }
    metrics = run_outputs.run_metrics(prep, results, run_config, False)
    metrics["protocol"] = protocol_record(options)
    stage_state = {k: v.detach().cpu().clone() for k, v in net.pooled.stage.state_dict().items()}
    metrics["finetune"] = {
        "maps": store.layer,
        "map_views": store.map_views,
        "map_shape": list(store.shape),
        "trained": list(cut.trained),
        "bn": chosen.bn,
        "stage_lr": chosen.stage_rate,
        "head_lr": chosen.lr,
        "stage_sha256": state_dict_sha256(stage_state),
        "selection": selection,
        "configs": [asdict(c) for c in configs],
    }
    if options.tune:
        metrics["tune"] = {"grid": options.tune, "configs": [asdict(c) for c in configs]}
    if chosen.bn == "frozen":
        reporter.warn(
            "finetune_bn", "BatchNorm statistics of the stage stay the backbone's (--bn train updates them)"
        )
    if probe is not None:
        metrics["probe"] = probe.to_json()
        test = (metrics["test"] or {}).get("final")
        metrics["baseline"] = baseline(metrics["summary"], probe.summary, test, probe.test)
        metrics["verdict"] = verdict_of(prep, results, probe, options)
        reporter.warn("probe_verdict", metrics["verdict"]["text"])
    metrics["warnings"] = [
        *prep.warnings.items,
        *[w for w in reporter.warnings if w not in prep.warnings.items],
    ]

    def write_models(tmp: Path) -> None:
        _write_head(tmp / "head.pt", prep, results, chosen, run_config, metrics["finetune"], stage_state)
        np.save(tmp / STAGE_FEATURES, pooled_features(net, store, np.arange(store.cache.n_images)))

    timings = {"started": t_start, "load_cache_s": prep.load_s, "train_s": train_s, "probe_s": probe_s}
    made = run_outputs.publish_run(
        out, prep, results, metrics, replace(options, tta=False), timings, write_models
    )
    return RunResult(out.absolute(), metrics, made)


def _write_head(
    path: Path,
    prep: Prepared,
    results: list[HeadResult],
    cfg: FinetuneConfig,
    config: dict,
    record: dict,
    stage: dict,
) -> None:
    """train-head's head.pt with the fine-tuned stage beside the head (fold models are not kept: their
    out-of-fold predictions are in predictions.csv)."""
    run_outputs.write_head(path, prep, results, HeadConfig(hidden=cfg.hidden, dropout=cfg.dropout), config)
    blob = torch.load(path, weights_only=True)
    blob["fold_state_dicts"] = []
    blob["finetune"] = {**plain(record), "format": FINETUNE_FORMAT, "stage_state_dict": stage}
    atomic_torch_save(blob, path)
