"""Where a GPU waits: torch.profiler summaries of `extract`'s loop and of end-to-end inference throughput,
each beside its model-only baseline measured in the same run.

(a) extract on a synthetic tree of 450x450 BMPs at 224 px, extract's defaults (batch, workers, auto
    precision): unprofiled for the ratio extract-loop / model-alone forwards/s, then once more under
    torch.profiler for the table;
(b) end-to-end throughput (file -> probabilities) at one batch size with `bench`'s decoder workers, against
    model-only on tensors already on the device; then once more under torch.profiler.
The top operators by self device time (self CPU time on a CPU) go to ``<out>.txt``; the JSON holds the top
rows, the device-busy fraction of each profiled span (kernel time / wall time) and the ratios. On a CPU
this runs too (for smoke tests); the figures that matter are CUDA's. Targets: extract >= 0.85x and
end-to-end >= 0.9x of model-only.

    PYTHONPATH=$PWD python3 benchmarks/gpu_profile.py --device cuda \
        --out benchmarks/results/gpu_profile_cuda.json
"""

from __future__ import annotations  # noqa: I001 - fastall first: its OpenMP wait policy must precede torch

import fastall  # noqa: F401
import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import write_result
from benchmarks.extract_throughput import build_tree, model_alone
from fastall.data.loader import default_workers
from fastall.data.walk import find_images
from fastall.features.extract import extract
from fastall.inference.bench import random_model, throughput
from fastall.system.devices import decide_precision

TARGETS = {"extract_loop_vs_model": 0.85, "end_to_end_vs_model_only": 0.9}


def summary(prof, device: torch.device, wall_s: float, rows: int) -> tuple[str, dict]:
    """The profiler's table (top ``rows`` by self device time, or self CPU time) and its JSON digest."""
    cuda = device.type == "cuda"
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    table = events.table(sort_by=key, row_limit=rows)

    def device_us(e) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    top = sorted(events, key=lambda e: device_us(e) if cuda else e.self_cpu_time_total, reverse=True)[:rows]
    busy_us = sum(device_us(e) for e in events) if cuda else None
    digest = {
        "wall_s": wall_s,
        "device_busy_fraction": None if busy_us is None else busy_us / 1e6 / wall_s,
        "top": [
            {
                "name": e.key,
                "calls": e.count,
                "self_cpu_ms": e.self_cpu_time_total / 1e3,
                "self_device_ms": device_us(e) / 1e3 if cuda else None,
            }
            for e in top
        ],
    }
    return table, digest


def profiled(fn, device: torch.device, rows: int) -> tuple[str, dict]:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    return summary(prof, device, wall, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=None, help="[4000 cuda, 24 cpu]")
    ap.add_argument("--views", type=int, default=None, help="[8 cuda, 1 cpu]")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=None, help="[256 cuda, 8 cpu]")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    images = args.images or (4000 if cuda else 24)
    views = args.views or (8 if cuda else 1)
    batch = args.batch_size or (256 if cuda else 8)
    choice = decide_precision("auto", dev)
    amp = choice.autocast_dtype
    tables, result = (
        [],
        {
            "benchmark": "gpu_profile",
            "device": args.device,
            "precision_decision": choice.to_dict(),
            "settings": {**vars(args), "images": images, "views": views, "batch_size": batch},
            "targets": TARGETS,
        },
    )
    tmp = Path(tempfile.mkdtemp(prefix="fastall-profile-"))
    try:
        images = build_tree(tmp / "data", images)
        build_tree(tmp / "warm", min(images, 2 * batch), unique=32)
        common = {"views": views, "image_size": args.image_size, "weights": "none", "device": args.device}
        common.update(batch_size=batch, include=())
        extract(tmp / "warm", tmp / "warm.h5", **common)
        alone = model_alone(dev, batch, args.image_size, amp, seconds=5.0 if cuda else 3.0)
        summary_ = extract(tmp / "data", tmp / "a.h5", **common)
        loop = summary_.computed * views / summary_.loop_seconds
        result["extract"] = {
            "model_alone_forwards_per_s": alone["forwards_per_s"],
            "loop_forwards_per_s": loop,
            "extract_loop_vs_model": loop / alone["forwards_per_s"],
            "workers": "extract's default",
        }
        table, digest = profiled(lambda: extract(tmp / "data", tmp / "b.h5", **common), dev, args.rows)
        result["extract"]["profile"] = digest
        tables.append(f"== extract ({images} images x {views} views, batch {batch})\n{table}")

        model = random_model(args.image_size, args.device).optimize(choice.precision, backend="eager")
        files = find_images([tmp / "data"])[0][: max(4 * batch, 64)]
        workers = default_workers(dev)
        tput = throughput(model, files, batch, batches=3 if cuda else 2, workers=workers)
        result["end_to_end"] = {**tput, "workers": workers}
        table, digest = profiled(
            lambda: throughput(model, files, batch, batches=3 if cuda else 2, workers=workers), dev, args.rows
        )
        result["end_to_end"]["profile"] = digest
        tables.append(f"== end-to-end throughput (batch {batch}, {workers} decoder workers)\n{table}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["ratios"] = {
        "extract_loop_vs_model": result["extract"]["extract_loop_vs_model"],
        "end_to_end_vs_model_only": result["end_to_end"]["end_to_end_vs_model_only"],
    }
    out = write_result(args.out, result, args.device)
    out.with_suffix(".txt").write_text("\n\n".join(tables) + "\n")
    print(json.dumps(result["ratios"], indent=2))


if __name__ == "__main__":
    main()
