"""Frozen head vs linear probe vs finetune (layer4 + head from layer3 maps), on the same folds, measured.

For each synthetic set (generic layout, 4 classes, ``--difficulty hard --class-margin 0.3``, light and
black backgrounds: sets the defaults were not tuned on), with a random-init ResNet-18 (``--weights none``:
random features leave the most room for fine-tuning), one maps store (`extract --maps layer3`) feeds
train-head's default preset (the frozen head, with the probe fitted on the same folds) and finetune's
default preset. Each method's pooled out-of-fold predictions on the same rows are compared by a paired
patient bootstrap (AUC and log-loss differences with 95% CIs, fastall.training.verdict.paired_verdict):
finetune - probe and finetune - frozen head; and finetune forced to train 10 epochs (no early stopping:
what fine-tuning itself does).

    PYTHONPATH=$PWD python3 benchmarks/finetune_accuracy.py
"""

from __future__ import annotations  # noqa: I001 - fastall first: its OpenMP wait policy must precede torch

import fastall  # noqa: F401
import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import write_result
from fastall.data.synth import GENERIC_PATIENT_REGEX, synthesize
from fastall.features.cache import read_cache
from fastall.features.extract import extract
from fastall.finetune.config import FinetuneConfig
from fastall.finetune.run import finetune
from fastall.training.config import TrainOptions
from fastall.training.presets import apply_preset
from fastall.training.train_head import train_head
from fastall.training.verdict import paired_verdict


def oof(run: Path, classes: list[str]) -> dict[str, tuple[str, np.ndarray]]:
    """path -> (patient, probabilities) of the run's out-of-fold rows."""
    with open(run / "predictions.csv", newline="") as fh:
        return {
            r["path"]: (r["patient"], np.array([float(r[f"p_{c}"]) for c in classes]))
            for r in csv.DictReader(fh)
            if r["split"] == "val"
        }


def one_set(root: Path, background: str, args: argparse.Namespace) -> dict:
    data, store = root / f"data-{background}", root / f"maps-{background}.h5"
    synthesize(
        data,
        layout="generic",
        classes=4,
        background=background,
        difficulty="hard",
        patients_per_class=args.patients,
        images_per_patient=args.images,
        size=args.size,
        seed=args.seed,
        class_margin=args.margin,
    )
    extract(
        data,
        store,
        views=args.views,
        image_size=args.size,
        weights="none",
        backbone="resnet18",
        device="cpu",
        precision="fp32",
        maps="layer3",
        patient_regex=GENERIC_PATIENT_REGEX,
    )
    config, protocol = apply_preset("default", {}, {})
    options = TrainOptions(folds=args.folds, test="none", seed=args.seed, progress=False, report=False)
    t0 = time.perf_counter()
    head = train_head(
        store, root / f"head-{background}", config, TrainOptions(**{**options.__dict__, **protocol})
    )
    head_s, t0 = time.perf_counter() - t0, time.perf_counter()
    tuned = finetune(store, root / f"ft-{background}", None, options)
    ft_s = time.perf_counter() - t0
    forced = finetune(store, root / f"ftf-{background}", FinetuneConfig(patience=None), options)
    classes = head.metrics["classes"]["names"]
    a, b, f = oof(head.out, classes), oof(tuned.out, classes), oof(forced.out, classes)
    paths = sorted(a)
    assert paths == sorted(b)
    labels = np.array(
        [classes.index(Path(p).parent.name) if Path(p).parent.name in classes else -1 for p in paths]
    )

    cache = read_cache(store, load_features=False)
    label_of = {p: int(y) for p, y in zip(cache.paths, cache.labels, strict=True)}
    labels = np.array([label_of[p] for p in paths])
    patients = np.array([a[p][0] for p in paths])
    p_head, p_ft = np.stack([a[p][1] for p in paths]), np.stack([b[p][1] for p in paths])
    p_forced = np.stack([f[p][1] for p in paths])
    probe = head.metrics["probe"]
    k = len(classes)
    versus_head = paired_verdict(labels, p_ft, p_head, patients, classes=k, seed=args.seed)
    forced_vs_head = paired_verdict(labels, p_forced, p_head, patients, classes=k, seed=args.seed)
    summary = {
        "frozen_head": {
            "cv_accuracy": head.metrics["summary"]["accuracy"],
            "cv_auc": head.metrics["summary"]["auc"],
        },
        "probe": {"cv_accuracy": probe["summary"]["accuracy"], "cv_auc": probe["summary"]["auc"]},
        "finetune": {
            "cv_accuracy": tuned.metrics["summary"]["accuracy"],
            "cv_auc": tuned.metrics["summary"]["auc"],
        },
        "finetune_10_epochs": {
            "cv_accuracy": forced.metrics["summary"]["accuracy"],
            "cv_auc": forced.metrics["summary"]["auc"],
        },
    }
    return {
        "background": background,
        "images": int(cache.n_images),
        "patients": int(np.unique(cache.patients).size),
        "summary": summary,
        "finetune_minus_probe": tuned.metrics["verdict"],
        "frozen_head_minus_probe": head.metrics["verdict"],
        "finetune_minus_frozen_head": versus_head,
        "finetune_10_epochs_minus_probe": forced.metrics["verdict"],
        "finetune_10_epochs_minus_frozen_head": forced_vs_head,
        "finetune_selection": tuned.metrics["finetune"]["selection"],
        "seconds": {"train_head": head_s, "finetune": ft_s},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=6)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--margin", type=float, default=0.3, help="synth --class-margin (hard: 0.5)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/finetune_accuracy_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        sets = [one_set(Path(tmp), bg, args) for bg in ("light", "black")]
    result = {
        "benchmark": "finetune_accuracy",
        "what": "frozen head vs probe vs finetune (resnet18 random init, layer3 maps) on the same folds",
        "settings": vars(args),
        "sets": sets,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    print(json.dumps(result, indent=2, default=str))
    write_result(args.out, result)


if __name__ == "__main__":
    main()
