"""CPU cost of the foundation encoders (timm presets) and of ResNet-50 cut after layer3, each beside ResNet-50
measured first in the same run: batch-1 latency (p50, model-only on a normalised tensor and end-to-end from a
450x450 BMP file to probabilities, through `fastall bench`'s timers), parameters and feature dimension, at
224 px. Random-init weights: the cost does not depend on them. The machine record (CPU class, load average
before and after) is in the JSON.

    PYTHONPATH=$PWD python benchmarks/encoders.py --threads 2 --out benchmarks/results/encoders_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import write_result
from fastall.features.backbone import get_spec, load_backbone
from fastall.head import Head
from fastall.inference.bench import latency, synthetic_files
from fastall.inference.model import LeukemiaClassifier

BASELINE = "resnet50"
DEFAULT = "resnet50,resnet50@layer3,dinobloom-s,dinobloom-b,dinov2-s,dinov2-b,dinobloom-l"


def build(entry: str, size: int) -> tuple[LeukemiaClassifier, dict]:
    """``name`` or ``name@layers``: random-init backbone + random head, as `fastall bench` times them."""
    name, _, layers = entry.partition("@")
    t0 = time.perf_counter()
    backbone, info = load_backbone("none", backbone=name, layers=layers or None, image_size=size)
    model = LeukemiaClassifier(
        backbone,
        Head(in_features=info.feature_dim),
        image_size=size,
        class_names=["hem", "all"],
        mean=info.mean,
        std=info.std,
    )
    meta = {
        "title": get_spec(name).title,
        "layers": list(info.layers or []),
        "pool": info.pool,
        "feature_dim": info.feature_dim,
        "params": info.params,
        "build_s": time.perf_counter() - t0,
    }
    return model, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoders", default=DEFAULT, help="comma-separated names, name@layer3 for stages")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="latency rounds (the best kept; noisy machines)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.encoders.split(",") if n.strip()]
    names = [BASELINE] + [n for n in names if n != BASELINE]
    rows = []
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="fastall-encoders-") as tmp:
        files = synthetic_files(Path(tmp) / "files", 8)
        for name in names:
            model, meta = build(name, args.image_size)
            lat = latency(model, files, warmup=args.warmup, iters=args.iters, rounds=args.rounds)
            row = {
                "encoder": name,
                **meta,
                "image_size": args.image_size,
                "latency_model_only_p50_ms": lat["model_only"]["p50_ms"],
                "latency_end_to_end_p50_ms": lat["end_to_end"]["p50_ms"],
                "load_average_after": list(os.getloadavg()),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
            del model
    base = rows[0]["latency_model_only_p50_ms"]
    for row in rows:
        row["latency_vs_baseline"] = row["latency_model_only_p50_ms"] / base
    result = {
        "benchmark": "encoders",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "baseline": BASELINE,
        "note": "random-init weights (cost does not depend on them); fp32 eager; batch 1; ratios against the "
        "baseline measured in the same run; the machine is shared (load average recorded)",
        "load_average_before": load_before,
        "encoders": rows,
    }
    print(f"wrote {write_result(args.out, result)}")


if __name__ == "__main__":
    main()
