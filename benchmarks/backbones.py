"""Cost of each backbone at its natural input size, measured in one run, each figure beside ResNet-50's.

Per backbone (random init: the weights do not change the cost): parameters, feature dimension, batch-1
latency (p50; model-only on a normalised tensor, and end-to-end from a 450x450 BMP file to probabilities) and
model-only throughput at ``--batch``, all through `fastall bench`'s own timers. For ``--extract-backbones``
also the full `fastall extract` (decode -> augment -> forward -> shard) on a synthetic tree, against the
model-only throughput of the same backbone. Baseline: resnet50, measured first in the same run.

    PYTHONPATH=$PWD python benchmarks/backbones.py --device cpu --threads 2 \
        --out benchmarks/results/backbones_cpu.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from fastall.data.synth import synthesize
from fastall.features.backbone import BACKBONES
from fastall.features.extract import extract
from fastall.inference.bench import latency, machine_info, random_model, synthetic_files, throughput

BASELINE = "resnet50"
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx_vnni")
EXTRACT_DEFAULT = "resnet18,resnet50,mobilenet_v3_large"


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    return [f for f in FLAGS if f in line.split()]


def measure(name: str, files: list[Path], args: argparse.Namespace) -> dict:
    model = random_model(args.image_size, args.device, backbone=name).optimize("fp32", backend="eager")
    lat = latency(model, files, warmup=args.warmup, iters=args.iters, rounds=args.rounds)
    tput = throughput(model, files, args.batch, batches=args.batches, workers=0)
    return {
        "backbone": name,
        "title": BACKBONES[name].title,
        "image_size": model.image_size,
        "feature_dim": model.head.in_features,
        "params": int(sum(p.numel() for p in model.backbone.parameters())),
        "latency_model_only_p50_ms": lat["model_only"]["p50_ms"],
        "latency_end_to_end_p50_ms": lat["end_to_end"]["p50_ms"],
        "latency_rounds_end_to_end_p50_ms": lat["rounds_end_to_end_p50_ms"],
        "throughput_model_only_img_s": tput["model_only_img_s"],
        "throughput_end_to_end_img_s": tput["end_to_end_img_s"],
        "batch_size": args.batch,
    }


def measure_extract(name: str, data: Path, tmp: Path, size: int, args: argparse.Namespace) -> dict:
    common = {"weights": "none", "device": args.device, "workers": 0, "amp": False}
    common |= {"batch_size": args.batch, "image_size": size, "backbone": name}
    extract(data, tmp / f"warm-{name}.h5", views=1, **common)  # warm-up: first-call kernels, allocator
    summary = extract(data, tmp / f"{name}.h5", views=args.views, **common)
    return {
        "images": summary.computed,
        "views": args.views,
        "loop_seconds": summary.loop_seconds,
        "images_per_s": summary.images_per_s,
        "forwards_per_s": summary.forwards_per_s,
        "settings": "fp32 (no autocast), batch --batch, 0 decode workers",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads [2 on cpu]")
    ap.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated [all registered]")
    ap.add_argument("--extract-backbones", default=EXTRACT_DEFAULT)
    ap.add_argument("--image-size", type=int, default=None, help="[each backbone's natural size]")
    ap.add_argument("--batch", type=int, default=None, help="throughput batch [16 cpu, 128 cuda]")
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3, help="latency rounds (the best kept; noisy machines)")
    ap.add_argument("--extract-images", type=int, default=None, help="[48 cpu, 2000 cuda]")
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cuda = args.device == "cuda"
    args.batch = args.batch or (128 if cuda else 16)
    if args.threads or not cuda:
        torch.set_num_threads(args.threads or 2)
    names = [n.strip() for n in args.backbones.split(",") if n.strip()]
    names = [BASELINE] + [n for n in names if n != BASELINE]
    extract_names = [n.strip() for n in args.extract_backbones.split(",") if n.strip()]
    result: dict = {
        "benchmark": "backbones",
        "machine": {**machine_info(args.device), "cpu_flags": cpu_flags()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "baseline": BASELINE,
        "note": "random-init weights (cost does not depend on them); fp32 eager; ratios are against the "
        "baseline measured in the same run",
        "backbones": [],
        "extract": {},
    }
    with tempfile.TemporaryDirectory(prefix="fastall-backbones-") as tmp:
        tmp = Path(tmp)
        files = synthetic_files(tmp / "files", 16)
        for name in names:
            t0 = time.perf_counter()
            row = measure(name, files, args)
            print(f"{name}: {json.dumps({k: v for k, v in row.items() if 'rounds' not in k})}", flush=True)
            row["seconds"] = time.perf_counter() - t0
            result["backbones"].append(row)
        base = result["backbones"][0]
        for row in result["backbones"]:
            row["latency_vs_baseline"] = row["latency_model_only_p50_ms"] / base["latency_model_only_p50_ms"]
            row["throughput_vs_baseline"] = (
                row["throughput_model_only_img_s"] / base["throughput_model_only_img_s"]
            )
        n = args.extract_images or (2000 if cuda else 48)
        synthesize(
            tmp / "data", patients_per_class=2, images_per_patient=max(1, n // 4), size=450, prelim=False
        )
        for name in extract_names:
            row = next((r for r in result["backbones"] if r["backbone"] == name), None)
            size = row["image_size"] if row else args.image_size
            ex = measure_extract(name, tmp / "data", tmp, size, args)
            if row:
                ex["vs_model_only_throughput"] = ex["forwards_per_s"] / row["throughput_model_only_img_s"]
            result["extract"][name] = ex
            print(f"extract {name}: {json.dumps(ex)}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
