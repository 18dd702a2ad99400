"""Extract throughput against the model alone, measured in one run.

(a) model alone: backbone forwards/s on random tensors already on the device (same batch, resolution,
    precision, channels_last, inference_mode), measured before and after (b); the faster is the baseline;
(b) the full `fastall extract` on a synthetic tree of 450x450 BMPs (views count as forwards), after a warm-up
    extract on a small tree; its extraction loop (decode -> augment -> forward -> shard) and end to end;
(c) decoding alone: the extract DataLoader (decode + resize + parameter draws) with the same workers.

Ratios: (b)/(a), at the same precision (``--precision auto``: extract's own choice, bf16 only where the
device computes it natively). Goal: >= 0.85 on the GPU and on the CPU (AVX2 included).

    PYTHONPATH=$PWD python3 benchmarks/extract_throughput.py --device cuda --out benchmarks/results/x.json
    PYTHONPATH=$PWD python3 benchmarks/extract_throughput.py --device cpu --emulate avx2 \
        --out benchmarks/results/extract_throughput_cpu_avx2_emulated.json
"""

from __future__ import annotations  # noqa: I001 - fastall first: its OpenMP wait policy must precede torch

import fastall  # noqa: F401
import argparse
import datetime
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from fastall.data.discover import discover
from fastall.data.synth import synthesize
from fastall.features.backbone import load_backbone
from benchmarks.common import add_emulate_option, apply_emulation
from fastall.features.extract import AMP_DTYPES, extract
from fastall.features.loop import CHUNK, ImageViews
from fastall.system.devices import decide_precision
from fastall.system.machine import machine_info

UNIQUE_IMAGES = 240  # rendered by synthesize; the rest are hard links to them (decode cost is the same)


def build_tree(root: Path, images: int, unique: int = UNIQUE_IMAGES) -> int:
    """A C-NMC tree of ``images`` 450x450 BMPs: ~``unique`` rendered, then linked under new names."""
    unique = min(images, unique)
    synthesize(root, patients_per_class=4, images_per_patient=max(1, unique // 8), size=450, prelim=False)
    files = sorted((root / "C-NMC_Leukemia" / "training_data").rglob("*.bmp"))
    count, copy = len(files), 1
    while count < images:
        for f in files:
            if count >= images:
                break
            uid, patient, image, cell, cls = f.stem.split("_")
            target = f.with_name(f"{uid}_{patient}_{int(image) + 1000 * copy}_{cell}_{cls}.bmp")
            try:
                os.link(f, target)
            except OSError:
                shutil.copyfile(f, target)
            count += 1
        copy += 1
    return count


def model_alone(device: torch.device, batch: int, size: int, amp: torch.dtype | None, seconds: float) -> dict:
    model, _ = load_backbone("none", seed=0)
    model = model.to(device)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def step() -> None:
        with torch.inference_mode(), autocast:
            model(x)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        step()
    sync()
    iterations, start = 0, time.perf_counter()
    while iterations < 3 or time.perf_counter() - start < seconds:
        step()
        iterations += 1
        if device.type == "cuda" and iterations % 10:
            continue
        sync()
    sync()
    elapsed = time.perf_counter() - start
    return {"forwards_per_s": iterations * batch / elapsed, "iterations": iterations, "seconds": elapsed}


def decode_only(data: Path, size: int, views: int, batch: int, workers: int, pin: bool) -> dict:
    records = discover(data, include=()).records
    loader = torch.utils.data.DataLoader(
        ImageViews(records, list(range(len(records))), size, 0, views),
        batch_size=min(batch, CHUNK),
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4 if workers else None,
    )
    start = time.perf_counter()
    n = sum(len(b[2]) for b in loader)
    elapsed = time.perf_counter() - start
    return {"images": n, "seconds": elapsed, "images_per_s": n / elapsed, "workers": workers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=None, help="[6000 cuda, 40 cpu]")
    ap.add_argument("--views", type=int, default=None, help="[8 cuda, 2 cpu]")
    ap.add_argument("--batch-size", type=int, default=None, help="[256 cuda, 20 cpu]")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=None, help="[extract's default]")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    ap.add_argument("--amp-dtype", choices=["bf16", "fp16", "none"], default=None, help="older alias")
    add_emulate_option(ap)
    args = ap.parse_args()
    apply_emulation(args.emulate)
    if args.amp_dtype is not None:
        args.precision = "fp32" if args.amp_dtype == "none" else args.amp_dtype
    choice = decide_precision(args.precision, args.device)
    cuda = args.device == "cuda"
    images = args.images or (6000 if cuda else 40)
    views = args.views or (8 if cuda else 2)
    batch = args.batch_size or (256 if cuda else 20)
    cores = os.cpu_count() or 1
    workers = args.workers if args.workers is not None else (max(1, cores - 2) if cuda else 0)
    amp = AMP_DTYPES.get(choice.precision)
    device = torch.device(args.device)
    now = datetime.datetime.now().isoformat(timespec="seconds")
    machine = machine_info(args.device)
    result: dict = {
        "benchmark": "extract_throughput",
        "date": now,
        "machine": machine,
        "torchvision": torchvision.__version__,
        "dev_shm_free_bytes": shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else None,
        "emulated": args.emulate != "native",
        "device": args.device,
        "device_name": machine["device_name"],
        "precision_decision": choice.to_dict(),
        "settings": {
            "images": images,
            "views": views,
            "batch_size": batch,
            "workers": workers,
            "image_size": args.image_size,
            "precision": choice.precision,
            "source_image": "450x450 BMP",
            "channels_last": True,
        },
    }
    tmp = Path(tempfile.mkdtemp(prefix="fastall-bench-"))
    try:
        t0 = time.perf_counter()
        result["settings"]["images"] = images = build_tree(tmp / "data", images)
        build_tree(tmp / "warm", min(images, 2 * batch), unique=32)
        result["synthesis_seconds"] = time.perf_counter() - t0
        common = {
            "views": views,
            "image_size": args.image_size,
            "weights": "none",
            "device": args.device,
            "precision": choice.precision,
            "batch_size": batch,
            "workers": workers,
            "include": (),
        }
        extract(tmp / "warm", tmp / "warm.h5", **common)  # warm-up: CUDA context, kernels, allocator
        seconds = 5.0 if cuda else 8.0
        before = model_alone(device, batch, args.image_size, amp, seconds=seconds)
        summary = extract(tmp / "data", tmp / "c.h5", **common)
        after = model_alone(device, batch, args.image_size, amp, seconds=seconds)
        best = max(before, after, key=lambda r: r["forwards_per_s"])
        result["model_alone"] = {
            **best,
            "before_extract": before,
            "after_extract": after,
            "note": "baseline = the faster of the runs before and after the extract",
        }
        forwards = summary.computed * views
        result["extract"] = {
            "images": summary.computed,
            "views": views,
            "forwards": forwards,
            "loop_seconds": summary.loop_seconds,
            "total_seconds": summary.seconds,
            "loop_forwards_per_s": forwards / summary.loop_seconds,
            "total_forwards_per_s": forwards / summary.seconds,
            "cache_bytes": summary.cache_bytes,
            "note": "loop = decode -> augment -> forward -> shard written, for every image; total adds "
            "discovery, backbone load + sha256, and assembling/fsyncing the HDF5 file",
        }
        result["decode_only"] = decode_only(tmp / "data", args.image_size, views, batch, workers, cuda)
        base = result["model_alone"]["forwards_per_s"]
        result["ratios"] = {
            "extract_loop_vs_model": result["extract"]["loop_forwards_per_s"] / base,
            "extract_total_vs_model": result["extract"]["total_forwards_per_s"] / base,
            "decode_forwards_capacity_vs_model": result["decode_only"]["images_per_s"] * views / base,
        }
        result["goal"] = {"extract_loop_vs_model": 0.85}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("device_name", "settings", "ratios")}, indent=2))


if __name__ == "__main__":
    main()
