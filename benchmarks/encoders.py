"""CPU cost of the foundation encoders (timm presets) and of ResNet-50 cut after layer3, each beside ResNet-50
measured first in the same run: batch-1 latency (p50, model-only on a normalised tensor and end-to-end from a
450x450 BMP file to probabilities, through `fastall bench`'s timers), parameters and feature dimension, at
224 px. Random-init weights: the cost does not depend on them. The encoders are timed interleaved, round
after round, and each keeps its best round, so that a burst of load from others on a shared machine hits
all alike; the machine record (CPU class, load average before and after) is in the JSON. Forward GFLOPs
(torch's FlopCounterMode) give a cost that load cannot move.

    PYTHONPATH=$PWD python benchmarks/encoders.py --threads 2 --out benchmarks/results/encoders_cpu.json
"""

from __future__ import annotations

import argparse
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
        "gflops": gflops(backbone, size),
        "layers": list(info.layers or []),
        "pool": info.pool,
        "feature_dim": info.feature_dim,
        "params": info.params,
        "build_s": time.perf_counter() - t0,
    }
    return model, meta


def gflops(backbone: torch.nn.Module, size: int) -> float:
    """Forward FLOPs of one image (torch's FlopCounterMode): a cost figure that machine load cannot move."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        backbone(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoders", default=DEFAULT, help="comma-separated names, name@layer3 for stages")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds, best kept")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.encoders.split(",") if n.strip()]
    names = [BASELINE] + [n for n in names if n != BASELINE]
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="fastall-encoders-") as tmp:
        files = synthetic_files(Path(tmp) / "files", 8)
        built = [(name, *build(name, args.image_size)) for name in names]
        best: dict[str, dict] = {}
        for r in range(args.rounds):  # interleaved: every encoder once a round, the best round kept
            for name, model, _ in built:
                lat = latency(model, files, warmup=args.warmup, iters=args.iters, rounds=1)
                keep = best.setdefault(name, {"model_only": [], "end_to_end": []})
                keep["model_only"].append(lat["model_only"]["p50_ms"])
                keep["end_to_end"].append(lat["end_to_end"]["p50_ms"])
                print(f"round {r} {name}: {lat['model_only']['p50_ms']:.1f} ms", flush=True)
    rows = [
        {
            "encoder": name,
            **meta,
            "image_size": args.image_size,
            "latency_model_only_p50_ms": min(best[name]["model_only"]),
            "latency_end_to_end_p50_ms": min(best[name]["end_to_end"]),
            "rounds_model_only_p50_ms": best[name]["model_only"],
            "rounds_end_to_end_p50_ms": best[name]["end_to_end"],
        }
        for name, _, meta in built
    ]
    for key in ("model_only", "end_to_end"):
        base = rows[0][f"latency_{key}_p50_ms"]
        for row in rows:
            row[f"{key}_vs_baseline"] = row[f"latency_{key}_p50_ms"] / base
    for row in rows:
        row["gflops_vs_baseline"] = row["gflops"] / rows[0]["gflops"]
    result = {
        "benchmark": "encoders",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "baseline": BASELINE,
        "note": "random-init weights (cost does not depend on them); fp32 eager; batch 1; ratios against the "
        "baseline measured in the same run; the machine is shared (load average recorded)",
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "encoders": rows,
    }
    print(f"wrote {write_result(args.out, result)}")


if __name__ == "__main__":
    main()
