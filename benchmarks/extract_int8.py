"""int8 extract against bf16 extract against the fp32 model alone, in one run, on the CPU.

(a) model alone, fp32 and int8 (the calibrated FX int8 backbone `extract --precision int8` runs): forwards/s
    on a fixed normalised batch (ResNet-50, same batch and resolution, channels_last, inference_mode),
    before and after the extracts (the faster of the two is the baseline);
(b) `fastall extract --precision bf16` and `--precision int8` on the same tree of 450x450 BMPs (views count
    as forwards), after a small warm-up extract; the int8 run includes its calibration and quality check.

Projection: the full C-NMC cache (10,661 images x 8 views = 85,288 forwards) at the int8 extract loop's
rate, plus the int8 run's fixed cost (calibration, quality check, discovery, assembling the file) measured
here. Goal: <= 15 minutes on 2 cores. Others may share the CPU: the load is recorded at start and end.

    PYTHONPATH=$PWD python3 benchmarks/extract_int8.py --out benchmarks/results/extract_int8_cpu.json
"""

from __future__ import annotations  # noqa: I001 - fastall first: its OpenMP wait policy must precede torch

import fastall  # noqa: F401
import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import add_emulate_option, apply_emulation, write_result
from benchmarks.extract_throughput import build_tree
from fastall.features.backbone import load_backbone
from fastall.features.extract import extract
from fastall.features.quantize import OBSERVER_IMAGES, quantize_int8
from fastall.system.machine import cpu_capability

CNMC_FORWARDS = 10_661 * 8
GOAL_MINUTES = 15.0


def rate(model: torch.nn.Module, x: torch.Tensor, seconds: float, amp: torch.dtype | None = None) -> dict:
    """Forwards/s of ``model`` on the batch ``x`` (three warm-up calls, then at least ``seconds``)."""
    autocast = torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None)

    def step() -> None:
        with torch.inference_mode(), autocast:
            model(x)

    for _ in range(3):
        step()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        step()
        calls += 1
    elapsed = time.perf_counter() - start
    return {"forwards_per_s": calls * len(x) / elapsed, "calls": calls, "seconds": elapsed}


def models_alone(batch: int, size: int, seconds: float) -> dict:
    """fp32, bf16 and int8 ResNet-50 alone on one batch of normalised noise."""
    model, _ = load_backbone("none", seed=0)
    model = model.eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    int8 = quantize_int8(model, x[:1], calibration=x[:OBSERVER_IMAGES])
    return {
        "fp32": rate(model, x, seconds),
        "bf16": rate(model, x, seconds, torch.bfloat16),
        "int8": rate(int8, x, seconds),
    }


def best(before: dict, after: dict) -> dict:
    out = {}
    for name in before:
        faster = max(before[name], after[name], key=lambda r: r["forwards_per_s"])
        out[name] = {**faster, "before": before[name], "after": after[name]}
    return out


def timed_extract(data: Path, out: Path, precision: str, common: dict) -> dict:
    summary = extract(data, out, precision=precision, **common)
    forwards = summary.computed * common["views"]
    return {
        "precision": precision,
        "images": summary.computed,
        "forwards": forwards,
        "loop_seconds": summary.loop_seconds,
        "total_seconds": summary.seconds,
        "fixed_seconds": summary.seconds - summary.loop_seconds,
        "loop_forwards_per_s": forwards / summary.loop_seconds,
        "total_forwards_per_s": forwards / summary.seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/extract_int8_cpu.json")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=8.0, help="per model-alone measurement")
    add_emulate_option(ap)
    args = ap.parse_args()
    apply_emulation(args.emulate)
    load_start = os.getloadavg()
    result: dict = {
        "benchmark": "extract_int8",
        "emulated": args.emulate != "native",
        "device": "cpu",
        "cpu_capability": cpu_capability().to_dict(),
        "settings": {
            "images": args.images,
            "views": args.views,
            "batch_size": args.batch_size,
            "image_size": 224,
            "backbone": "resnet50",
            "weights": "none (random init; ImageNet weights are not available offline)",
            "source_image": "450x450 BMP (synthetic)",
            "workers": 0,
        },
    }
    tmp = Path(tempfile.mkdtemp(prefix="fastall-int8-"))
    try:
        images = build_tree(tmp / "data", args.images, unique=args.images)  # every image computed
        build_tree(tmp / "warm", 2 * args.batch_size, unique=32)
        common = {
            "views": args.views,
            "image_size": 224,
            "weights": "none",
            "device": "cpu",
            "batch_size": args.batch_size,
            "workers": 0,
            "include": (),
        }
        result["settings"]["images"] = images
        extract(tmp / "warm", tmp / "warm.h5", precision="bf16", **common)
        before = models_alone(args.batch_size, 224, args.seconds)
        bf16 = timed_extract(tmp / "data", tmp / "bf16.h5", "bf16", common)
        int8 = timed_extract(tmp / "data", tmp / "int8.h5", "int8", common)
        after = models_alone(args.batch_size, 224, args.seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    alone = best(before, after)
    result["model_alone"] = {**alone, "note": "each: the faster of the runs before and after the extracts"}
    result["extract"] = {"bf16": bf16, "int8": int8}
    fp32_rate = alone["fp32"]["forwards_per_s"]
    result["ratios"] = {
        "int8_vs_bf16_extract": int8["loop_forwards_per_s"] / bf16["loop_forwards_per_s"],
        "int8_extract_vs_fp32_model": int8["loop_forwards_per_s"] / fp32_rate,
        "bf16_extract_vs_fp32_model": bf16["loop_forwards_per_s"] / fp32_rate,
        "int8_model_vs_fp32_model": alone["int8"]["forwards_per_s"] / fp32_rate,
        "int8_extract_vs_int8_model": int8["loop_forwards_per_s"] / alone["int8"]["forwards_per_s"],
        "bf16_extract_vs_bf16_model": bf16["loop_forwards_per_s"] / alone["bf16"]["forwards_per_s"],
    }
    minutes = {
        name: (CNMC_FORWARDS / run["loop_forwards_per_s"] + run["fixed_seconds"]) / 60
        for name, run in (("int8", int8), ("bf16", bf16))
    }
    result["cnmc_projection"] = {
        "forwards": CNMC_FORWARDS,
        "int8_minutes": minutes["int8"],
        "bf16_minutes": minutes["bf16"],
        "fp32_model_alone_minutes": CNMC_FORWARDS / fp32_rate / 60,
        "goal_minutes": GOAL_MINUTES,
        "int8_meets_goal": minutes["int8"] <= GOAL_MINUTES,
        "note": "forwards / loop rate + the run's fixed cost (int8: calibration and quality check included)",
    }
    result["load_average_start"] = load_start
    result["load_average_end"] = os.getloadavg()
    path = write_result(args.out, result)
    print(path, {k: round(v, 3) for k, v in result["ratios"].items()}, result["cnmc_projection"])


if __name__ == "__main__":
    main()
