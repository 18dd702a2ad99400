"""`fastall probe`: every protocol of the field on one cache, on train-head's patient-level folds and test
set.

Linear (C by inner patient-grouped CV over a fine grid, and a fixed-C reference), cosine kNN (plain and
temperature-weighted votes), the MLP head by the default train-head protocol (``mlp``), label-efficiency
curves, the batch-effect score and the embedding map. Outputs (written atomically): probe.json, probe.csv
(one row per protocol), map.csv (the 2-D map), mlp/ (the MLP's train-head run) and report/ (the HTML page).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastall.reporting.provenance import command_line
from fastall.system.events import Reporter, silent
from fastall.system.jsonable import plain
from fastall.system.runfolder import atomic_folder, check_target
from fastall.training.config import TrainOptions
from fastall.training.protocols import knn
from fastall.training.protocols.batch_effect import batch_effect
from fastall.training.protocols.efficiency import DRAWS, label_efficiency
from fastall.training.protocols.linear import C_GRID, FIXED_C, INNER_FOLDS, linear_protocol
from fastall.training.protocols.scores import csv_row, protocol_scores

PROBE_FORMAT, PROBE_VERSION = "fastall-probe", 1


@dataclass(frozen=True)
class ProbeOptions:
    """How ``fastall probe`` runs: train-head's split options (same folds, test set and seed) and the
    protocols' settings."""

    folds: int = 5
    test: str = "holdout"
    holdout: float = 0.1
    seed: int = 0
    device: str = "auto"
    dedupe: bool = False
    ks: tuple[int, ...] = knn.KS
    temperature: float = knn.TEMPERATURE
    draws: int = DRAWS
    c_grid: tuple[float, ...] = C_GRID
    fixed_c: float = FIXED_C
    inner_folds: int = INNER_FOLDS
    mlp: bool = True
    embedding: bool = True
    efficiency: bool = True
    overwrite: bool = False
    report: bool = True
    positive: str | None = None


@dataclass
class ProbeRun:
    out: Path
    record: dict[str, Any]
    report: Any = None


def probe(
    cache_path: str | Path,
    out: str | Path,
    options: ProbeOptions | None = None,
    reporter: Reporter | None = None,
) -> ProbeRun:
    """Run every protocol (module doc) on ``cache_path`` and write the folder ``out``; its warnings go to
    ``reporter`` as they are known (and into probe.json)."""
    from fastall.training.prepared import prepare

    options = options or ProbeOptions()
    reporter = reporter or silent()
    t_start = time.perf_counter()
    out = Path(out)
    check_target(out.absolute(), options.overwrite, kind=PROBE_FORMAT)
    train_options = TrainOptions(
        folds=options.folds,
        test=options.test,
        holdout=options.holdout,
        seed=options.seed,
        device=options.device,
        dedupe=options.dedupe,
        precision="fp32",
        progress=False,
        report=False,
        positive=options.positive,
    )
    prep = prepare(cache_path, train_options)
    cache, splits, k = prep.cache, prep.splits, len(prep.cache.class_names)
    labels, patients = cache.labels, np.asarray(cache.patients, dtype=object)
    x = torch.from_numpy(np.ascontiguousarray(cache.features[:, 0], dtype=np.float32)).to(prep.device)
    timings: dict[str, float] = {"load_s": prep.load_s}
    notes = list(dict.fromkeys([w["text"] for w in prep.warnings.items] + list(prep.notes)))
    protocols, linear, timings_p, sims = _probes(x, labels, patients, splits, k, options, prep.positive.index)
    timings.update(timings_p)
    notes += linear.notes
    record: dict[str, Any] = {
        "command": command_line(),
        "format": PROBE_FORMAT,
        "format_version": PROBE_VERSION,
        "cache": {
            "path": str(cache.path.absolute()),
            "key": cache.key,
            "images": cache.n_images,
            "views": cache.n_views,
            "dim": cache.dim,
            "class_names": cache.class_names,
        },
        "classes": {"names": list(cache.class_names), "positive": prep.positive.record()},
        "options": {
            "folds": options.folds,
            "test": options.test,
            "holdout": options.holdout,
            "seed": options.seed,
            "device": prep.device.type,
            "ks": list(options.ks),
            "temperature": options.temperature,
            "draws": options.draws,
            "inner_folds": options.inner_folds,
            "fixed_c": options.fixed_c,
        },
        "splits": {
            "test_mode": splits.test_mode,
            "pool_images": int(splits.pool.size),
            "test_images": int(splits.test.size),
            "audit": prep.audit,
            "patient_groups": bool(np.unique(patients.astype(str)).size < labels.size),
        },
        "linear": {
            "c_grid": list(linear.c_grid),
            "chosen_c": linear.chosen[: len(splits.folds)],
            "final_c": linear.chosen[-1] if splits.test.size else None,
            "inner_folds": linear.inner_folds,
            "inner_log_loss": linear.inner_loss,
            "fixed_c": linear.fixed_c,
            "selection": "the C of the lowest mean inner log loss; "
            "inner patient-grouped K-fold CV on each fold's training patients; grid walked upwards with "
            "warm starts",
        },
        "protocols": protocols,
        "warnings": notes,
    }
    labelled = np.flatnonzero(labels >= 0)
    if options.efficiency:
        t0 = time.perf_counter()
        record["label_efficiency"] = label_efficiency(
            x, labels, patients, splits.folds, k,
            c=options.fixed_c, ks=options.ks, temperature=options.temperature,
            repeats=options.draws, seed=options.seed, sims=sims,
        )  # fmt: skip
        record["label_efficiency"]["unit"] = (
            "patients" if record["splits"]["patient_groups"] else "images"
        ) + " per class"
        timings["label_efficiency_s"] = time.perf_counter() - t0
    del sims
    t0 = time.perf_counter()
    record["batch_effect"] = batch_effect(
        x[torch.as_tensor(labelled, device=x.device)], labels[labelled], patients[labelled], seed=options.seed
    )
    timings["batch_effect_s"] = time.perf_counter() - t0
    if record["batch_effect"]["warning"]:
        notes.append(record["batch_effect"]["warning"])
    coords = None
    if options.embedding:
        from fastall.training.protocols.embedding import embed_2d

        t0 = time.perf_counter()
        coords, method = embed_2d(cache.features[labelled, 0], seed=options.seed)
        record["embedding"] = {"method": method, "view": 0, "points": int(labelled.size), "file": "map.csv"}
        timings["embedding_s"] = time.perf_counter() - t0
    for note in notes:
        reporter.warn("probe", note)
    with atomic_folder(out, overwrite=options.overwrite) as tmp:
        if options.mlp:
            t0 = time.perf_counter()
            record["protocols"]["mlp"] = _mlp(cache_path, tmp / "mlp", train_options, options)
            timings["mlp_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start
        record["timings"] = timings
        _write_csv(tmp / "probe.csv", record)
        if coords is not None:
            fold_of = splits.fold_of_row(labels.size)
            _write_map(tmp / "map.csv", coords, labelled, cache, fold_of)
        (tmp / "probe.json").write_text(json.dumps(plain(record), indent=2, allow_nan=False) + "\n")
        made = None
        if options.report:
            from fastall.reporting.probe_report import write_probe_report

            made = write_probe_report(tmp, shown_as=out.absolute())
    return ProbeRun(out.absolute(), record, made)


def _probes(x, labels, patients, splits, k, options, positive=None) -> tuple[dict, Any, dict, list]:
    """Linear and kNN: out-of-fold and test probabilities, scored (``positive``: the positive class
    index); with the folds' kNN similarity matrices, which label efficiency reads again (none without it)."""
    folds = splits.folds
    has_test = bool(splits.test.size)
    row_sets = [tr for tr, _ in folds] + ([splits.pool] if has_test else [])
    t0 = time.perf_counter()
    linear = linear_protocol(
        x, labels, patients, row_sets, k,
        seed=options.seed, c_grid=options.c_grid, fixed_c=options.fixed_c, inner_folds=options.inner_folds,
    )  # fmt: skip
    timings = {"linear_s": time.perf_counter() - t0}
    probs: dict[str, np.ndarray] = {}
    tests: dict[str, np.ndarray] = {}

    def rows(r: np.ndarray) -> torch.Tensor:
        return x[torch.as_tensor(r, device=x.device)]

    for name, fixed in (("linear", False), ("linear_fixed_c", True)):
        probs[name] = np.full((labels.size, k), np.nan)
        for i, (_, val) in enumerate(folds):
            probs[name][val] = linear.proba(i, rows(val), fixed)
        if has_test:
            tests[name] = linear.proba(len(folds), rows(splits.test), fixed)
    t0 = time.perf_counter()
    pairs = [(tr, va) for tr, va in folds] + ([(splits.pool, splits.test)] if has_test else [])
    sims = []
    for i, (tr, va) in enumerate(pairs):
        sim = knn.similarities(x, tr, va)
        if options.efficiency and i < len(folds):
            sims.append(sim)
        for (kk, vote), shares in knn.votes(
            sim, labels[tr], k, ks=options.ks, temperature=options.temperature
        ).items():
            name = f"knn{kk}_{vote}"
            if i < len(folds):
                probs.setdefault(name, np.full((labels.size, k), np.nan))[va] = shares
            else:
                tests[name] = shares
    timings["knn_s"] = time.perf_counter() - t0
    out = {
        name: protocol_scores(
            labels,
            patients,
            folds,
            p,
            k,
            test=splits.test,
            test_prob=tests.get(name),
            seed=options.seed,
            positive=positive,
        )
        for name, p in probs.items()
    }
    for i, c in enumerate(linear.chosen[: len(folds)]):
        out["linear"]["folds"][i]["c"] = c
    return out, linear, timings, sims or None


def _mlp(cache_path: str | Path, run: Path, train_options: TrainOptions, options: ProbeOptions) -> dict:
    """The default train-head protocol on the same folds, written to ``run``; its scores. The MLP itself:
    without the default's last step, the probe-or-MLP choice (the probe has its own rows)."""
    from fastall.training.presets import DEFAULT_PRESET, apply_preset
    from fastall.training.train_head import train_head

    config, protocol = apply_preset(DEFAULT_PRESET, {}, {})
    opts = replace(train_options, probe=False, precision="auto", **{**protocol, "choose": False})
    result = train_head(cache_path, run, config, opts)
    m = result.metrics
    return {
        "folds": m["folds"],
        "summary": m["summary"],
        "pooled": m["pooled"],
        "test": (m["test"] or {}).get("final"),
        "run": "mlp",
        "protocol": m.get("protocol"),
    }


def _write_csv(path: Path, record: dict) -> None:
    curves = (record.get("label_efficiency") or {}).get("curves", {})
    rows = [
        csv_row(name, scores, (curves.get(name) or {}).get("reach_95"))
        for name, scores in record["protocols"].items()
    ]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(plain(rows))


def _write_map(path: Path, coords: np.ndarray, rows: np.ndarray, cache: Any, fold_of: np.ndarray) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["x", "y", "class", "patient", "fold", "source"])
        for (a, b), r in zip(coords, rows, strict=True):
            fold = "test" if fold_of[r] == -1 else int(fold_of[r])
            writer.writerow(
                [f"{a:.4f}", f"{b:.4f}", cache.class_names[int(cache.labels[r])], cache.patients[r], fold,
                 cache.sources[r]]
            )  # fmt: skip
