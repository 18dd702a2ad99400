"""`fastall explain` benchmark: localisation on synthetic cells, the model-randomisation check, and speed.

The run is made by the project's own pipeline: a synthetic C-NMC tree (fastall.data.synth: one cell on
black per image), `extract` with a deterministic random-init ResNet-50 (no ImageNet weights offline) and
`train-head`. For each method (gradcam, gradcam++, layercam):

- localisation: the share of map mass inside the cell (the explain.csv column) against the cell's area
  fraction, over the explained images; ratio = share / area (1.0: no better than a uniform map). Random-init
  features are weak: this figure says how the mechanics behave, not how a real model localises.
- model randomisation (Adebayo et al. 2018): mean Spearman rank correlation between the trained head's maps
  and those of a freshly initialised head (same backbone, same standardisation), per class; < 0.5 passes.
- speed on --threads CPU threads: seconds for one image and per image in a batch of 32, against the plain
  end-to-end forward (what `predict` runs) measured in the same run (ratio explain / predict).

    PYTHONPATH=$PWD python3 benchmarks/explain_bench.py --out benchmarks/results/explain_cpu.json

Smoke test: --patients 2 --images-per-patient 2 --image-side 96 --size 64 --explain-images 4 --reps 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from fastall.data.loader import iter_batches
from fastall.data.synth import synthesize
from fastall.data.walk import find_images
from fastall.features.extract import extract
from fastall.head import Head
from fastall.inference.bench import machine_info
from fastall.inference.explain import METHODS, cell_mask, explain_batch, load_explainable, mass_inside
from fastall.inference.model import LeukemiaClassifier
from fastall.training.train_head import train_head

GOAL_S_PER_IMAGE = 0.5


def build_run(base: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    synthesize(
        base / "data",
        patients_per_class=args.patients,
        images_per_patient=args.images_per_patient,
        size=args.image_side,
        prelim=False,
        seed=0,
    )
    extract(
        base / "data",
        base / "cache.h5",
        views=1,
        image_size=args.size,
        weights="none",
        device="cpu",
        amp=False,
        workers=0,
    )
    train_head(base / "cache.h5", base / "run", folds=2, test="none", device="cpu", progress=False)
    return base / "run", base / "data"


def load_images(data: Path, size: int, n: int) -> torch.Tensor:
    paths, _ = find_images([data])
    pick = np.linspace(0, len(paths) - 1, min(n, len(paths))).round().astype(int)
    return torch.cat([b.images for b in iter_batches([paths[i] for i in pick], size, 32)])


def random_head(model: LeukemiaClassifier, seed: int) -> LeukemiaClassifier:
    torch.manual_seed(seed)
    head = Head(**model.head.config())
    head.set_standardization(model.head.mean, model.head.std)
    return LeukemiaClassifier(
        model.backbone,
        head,
        image_size=model.image_size,
        class_names=model.class_names,
        provenance=model.provenance,
    )


def localisation(model: LeukemiaClassifier, images: torch.Tensor, method: str) -> dict:
    cams = np.concatenate([explain_batch(model, c, method=method).cams for c in images.split(32)])
    masks = [cell_mask(im.permute(1, 2, 0).numpy()) for im in images]
    share = [mass_inside(c, m) for c, m in zip(cams, masks, strict=True)]
    area = float(np.mean([m.mean() for m in masks]))
    inside = float(np.nanmean(share)) if not np.isnan(share).all() else None
    return {
        "images": len(images),
        "empty_maps": int(np.isnan(share).sum()),
        "mass_in_cell": inside,
        "cell_fraction": area,
        "ratio": inside / area if inside is not None else None,
    }


def randomisation(model: LeukemiaClassifier, images: torch.Tensor, method: str, seeds: int) -> dict:
    out = {}
    for c in model.class_names:
        trained = explain_batch(model, images, method=method, target=c).cams
        means = []
        for seed in range(seeds):
            other = explain_batch(random_head(model, seed), images, method=method, target=c).cams
            rho = [spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(trained, other, strict=True)]
            means.append(float(np.nanmean(rho)))
        out[c] = {"mean_rank_corr_per_seed": means, "passes": max(means) < 0.5}
    return out


def timed(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speed(model: LeukemiaClassifier, images: torch.Tensor, method: str, reps: int) -> dict:
    def forward(x: torch.Tensor):
        with torch.inference_mode():
            return torch.softmax(model(x), dim=1)

    out = {}
    for batch in (1, 32):
        x = (
            images[:batch]
            if len(images) >= batch
            else images.repeat((batch + len(images) - 1) // len(images), 1, 1, 1)[:batch]
        )
        cam_s = timed(lambda x=x: explain_batch(model, x, method=method), reps) / batch
        fwd_s = timed(lambda x=x: forward(x), reps) / batch
        out[f"batch_{batch}"] = {
            "explain_s_per_image": cam_s,
            "predict_s_per_image": fwd_s,
            "ratio_explain_over_predict": cam_s / fwd_s,
            "meets_goal": cam_s < GOAL_S_PER_IMAGE,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=6, help="Patients per class.")
    ap.add_argument("--images-per-patient", type=int, default=6)
    ap.add_argument("--image-side", type=int, default=450, help="Synthetic image side (C-NMC: 450).")
    ap.add_argument("--size", type=int, default=224, help="Model input size.")
    ap.add_argument("--explain-images", type=int, default=64)
    ap.add_argument("--randomisation-images", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run, data = build_run(Path(tmp), args)
        build_s = time.perf_counter() - t0
        model = load_explainable(run)
        images = load_images(data, model.image_size, args.explain_images)
        rand_images = images[np.linspace(0, len(images) - 1, args.randomisation_images).round().astype(int)]
        methods = {}
        for method in args.methods.split(","):
            methods[method] = {
                "localisation": localisation(model, images, method),
                "randomisation": randomisation(model, rand_images, method, args.seeds),
                "speed": speed(model, images, method, args.reps),
            }
            print(method, json.dumps(methods[method]), flush=True)
    result = {
        "benchmark": "explain",
        "machine": machine_info("cpu"),
        "settings": {**vars(args), "out": str(args.out), "weights": "none (random init)"},
        "run_build_s": build_s,
        "goal_s_per_image": GOAL_S_PER_IMAGE,
        "methods": methods,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
