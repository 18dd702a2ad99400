"""`fastall screen` speed: >= 2,000 leukocytes from 640x480 smears, against `predict` on the same crops.

The paper sells "approximately 2000 individual cells ... in just under two minutes". Here: a run made by the
project's pipeline (synthetic 450 px C-NMC cells, `extract` with a deterministic random-init ResNet-50 at
224 px, `train-head`), synthetic 640x480 smears (`synth --layout smear`) until they hold at least --cells
leukocytes, then in one process:

- ``screen``: `fastall.inference.screen.screen` end to end (model load, training scale, detection, crops,
  classification, tables, report), wall time and its own detect/classify split;
- ``predict``: `predict_paths` with the same model and precision on the crops screen wrote (the baseline:
  what classifying the same cells costs without detection);
- ``detect``: `fastall.data.detect.detect` alone on the decoded smears (smears/s at 640x480).

    PYTHONPATH=$PWD python3 benchmarks/screen_speed.py --out benchmarks/results/screen_speed_cpu.json
"""

from __future__ import annotations  # noqa: I001 - fastall first: its OpenMP wait policy must precede torch

import fastall  # noqa: F401
import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import write_result
from fastall.data.detect import detect
from fastall.data.images import decode_image
from fastall.data.synth import synthesize
from fastall.data.synth_smear import synthesize_smears
from fastall.features.extract import extract
from fastall.inference.artifacts import load_for_inference
from fastall.inference.predict import predict_paths
from fastall.inference.screen import ScreenConfig, screen
from fastall.training.config import HeadConfig, TrainOptions
from fastall.training.train_head import train_head

GOAL_CELLS, GOAL_SECONDS, GOAL_SMEARS_PER_S = 2000, 120.0, 10.0
CELLS_PER_SMEAR = 3.4  # synth_smear's mean (2-5 leukocytes, a few cut or merged)


def make_run(root: Path, backbone: str) -> Path:
    synthesize(root / "data", patients_per_class=3, images_per_patient=4, size=450, prelim=False)
    extract(
        root / "data",
        root / "cache.h5",
        views=1,
        image_size=224,
        backbone=backbone,
        weights="none",
        device="cpu",
        amp=False,
        workers=0,
    )
    train_head(
        root / "cache.h5",
        root / "run",
        HeadConfig(epochs=2),
        TrainOptions(folds=3, test="none", progress=False),
    )
    return root / "run"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=GOAL_CELLS)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--detect-smears", type=int, default=200, help="Smears timed for detection alone.")
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default="benchmarks/results/screen_speed_cpu.json")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="screen-speed-"))
    run = make_run(work, args.backbone)
    per_patient = 10
    patients = max(1, round(args.cells * 1.1 / CELLS_PER_SMEAR / per_patient / 2))
    synthesize_smears(
        work / "smears", patients_per_class=patients, smears_per_patient=per_patient, overwrite=True
    )

    start = time.perf_counter()
    result = screen(run, [work / "smears"], work / "screen", ScreenConfig(overwrite=True))
    screen_s = time.perf_counter() - start
    cells = result.summary["cells"]

    model = load_for_inference(run, precision=result.summary["precision"])
    start = time.perf_counter()
    preds = predict_paths(model, [work / "screen" / "cells"])
    predict_s = time.perf_counter() - start

    smears = sorted((work / "smears").glob("*.png"))[: args.detect_smears]
    pixels = [decode_image(p).permute(1, 2, 0).numpy() for p in smears]
    start = time.perf_counter()
    found = sum(len(detect(p)) for p in pixels)
    detect_s = time.perf_counter() - start

    out = {
        "what": "fastall screen on synthetic 640x480 smears against predict on the same crops, one process",
        "backbone": args.backbone,
        "precision": result.summary["precision"],
        "torch_threads": torch.get_num_threads(),
        "smears": result.summary["smears"],
        "cells": cells,
        "screen": {
            "seconds": screen_s,
            "cells_per_s": cells / screen_s,
            "split": result.summary["seconds"],
            "goal": f">= {GOAL_CELLS} cells in <= {GOAL_SECONDS:.0f} s",
            "met": cells >= GOAL_CELLS and screen_s <= GOAL_SECONDS,
        },
        "predict_same_crops": {
            "seconds": predict_s,
            "images": len(preds.paths),
            "cells_per_s": len(preds.paths) / predict_s,
        },
        "screen_vs_predict": screen_s / predict_s,
        "detect": {
            "smears": len(pixels),
            "size": list(pixels[0].shape[:2][::-1]),
            "cells": found,
            "seconds": detect_s,
            "smears_per_s": len(pixels) / detect_s,
            "goal": f">= {GOAL_SMEARS_PER_S:.0f} smears/s",
            "met": len(pixels) / detect_s >= GOAL_SMEARS_PER_S,
            "per_smear_vs_predict_per_crop": (detect_s / len(pixels)) / (predict_s / len(preds.paths)),
        },
        "command": "PYTHONPATH=$PWD python3 benchmarks/screen_speed.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "work"
        ),
    }
    path = write_result(args.out, out)
    print(
        f"screen: {cells} cells in {screen_s:.1f} s ({cells / screen_s:.1f} cells/s; predict alone "
        f"{predict_s:.1f} s); detect: {len(pixels) / detect_s:.1f} smears/s -> {path}"
    )


if __name__ == "__main__":
    main()
