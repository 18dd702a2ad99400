"""What content hashing costs extract, against decoding, measured in one run on the same files.

extract hashes the bytes each worker has just read for decoding (xxh3_128), so its added cost is the hash of
bytes already in memory. On every image of a tree (one pass each, after a warm-up read, so the page cache
holds the files and disk speed does not enter), per image:

(a) decode: read + decode + resize to 224, what an extract worker does per image (the baseline);
(b) decode + hash: the same with the content stamp, as extract runs it now;
(c) hash alone: xxh3_128 of the bytes in memory (and blake2b-128, the fallback without xxhash);
(d) the rerun check: ``os.stat`` of every file (size + mtime, what a no-op extract costs per image);
(e) ``--verify-content``: read + hash of every file (page cache warm).

Ratios: (c)/(a) and (b)/(a) - 1 (the second is the whole added work; on a busy machine it is within the
noise). The share of a GPU extract is projected from the committed GPU figures
(benchmarks/results/extract_throughput_cuda.json: seconds per image of the whole extract) with the hash
spread over the same decode workers; the single-threaded worst case is reported too. The ratio against
decoding is measured here; the GPU share is a projection, not a GPU measurement.

    fastall synth /tmp/real --like-manifest ../shared/data/cnmc2019_training_manifest.txt   # 10,661 BMPs
    PYTHONPATH=$PWD python3 benchmarks/hash_cost.py --data /tmp/real --out benchmarks/results/hash_cost.json
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fastall.data.discover import discover
from fastall.data.fingerprint import ALGORITHM, hash_bytes, hash_file
from fastall.data.loader import decode_resized, decode_resized_stamped
from fastall.data.synth import synthesize

GPU_RESULTS = Path(__file__).resolve().parent / "results" / "extract_throughput_cuda.json"


def machine() -> dict:
    cpu, flags = platform.processor(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.*)", text).group(1)
        flags = sorted(
            set(re.search(r"flags\s*:\s*(.*)", text).group(1).split()) & {"avx2", "avx512f", "sha_ni"}
        )
    except (OSError, AttributeError):
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hash": ALGORITHM,
        "load_average": os.getloadavg(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def timed(paths: list[Path], steps: dict, repeats: int) -> dict[str, float]:
    """Seconds per image of each ``steps[name](path)``: the steps run interleaved, image by image, so a load
    spike from other processes hits them alike; each image keeps its fastest of ``repeats`` tries."""
    best = {name: np.full(len(paths), np.inf) for name in steps}
    for k, path in enumerate(paths):
        for _ in range(repeats):
            for name, step in steps.items():
                start = time.perf_counter()
                step(path)
                best[name][k] = min(best[name][k], time.perf_counter() - start)
    return {name: float(values.mean()) for name, values in best.items()}


def measure(paths: list[Path], size: int, repeats: int) -> dict:
    for path in paths:  # warm the page cache: every figure below sees the same in-memory files
        path.read_bytes()
    blob: dict[Path, bytes] = {}

    def read(path: Path) -> None:
        blob["bytes"] = path.read_bytes()

    steps = {
        "decode_s": lambda p: decode_resized(p, size),
        "decode_and_hash_s": lambda p: decode_resized_stamped(p, size),
        "read_s": read,
        "hash_in_memory_s": lambda p: hash_bytes(blob["bytes"]),
        "blake2b_in_memory_s": lambda p: hashlib.blake2b(blob["bytes"], digest_size=16).digest(),
        "stat_s": os.stat,
        "read_and_hash_s": hash_file,
    }
    return timed(paths, steps, repeats)


def gpu_projection(per_image: dict, images: int) -> dict | None:
    """The hash's share of a GPU extract of ``images`` images, from the committed GPU throughput."""
    if not GPU_RESULTS.is_file():
        return None
    gpu = json.loads(GPU_RESULTS.read_text())
    extract_s = gpu["extract"]["total_seconds"] / gpu["extract"]["images"] * images
    workers = int(gpu["settings"]["workers"])
    hash_s = per_image["hash_in_memory_s"] * images
    return {
        "source": str(GPU_RESULTS.relative_to(GPU_RESULTS.parents[2])),
        "gpu": gpu.get("device_name"),
        "gpu_extract_seconds_projected": extract_s,
        "decode_workers": workers,
        "hash_seconds_single_thread": hash_s,
        "share_of_gpu_extract_spread_over_workers": hash_s / workers / extract_s,
        "share_of_gpu_extract_single_thread_worst_case": hash_s / extract_s,
        "goal": 0.05,
        "note": "hash time measured here on this CPU; GPU extract time from the committed GPU run",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="A tree to measure [a synthetic one of --images BMPs]")
    ap.add_argument("--images", type=int, default=200, help="Without --data: 450x450 BMPs to synthesize")
    ap.add_argument("--limit", type=int, default=None, help="Measure only the first N images of the tree")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3, help="Passes per figure; the best is kept")
    ap.add_argument("--note", default="", help="Recorded with the results (e.g. how the tree was made)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)  # one decode worker's view: extract decodes in single-threaded workers
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp)
        if not args.data:
            synthesize(
                data,
                patients_per_class=4,
                images_per_patient=max(1, args.images // 8),
                size=450,
                prelim=False,
            )
        paths = [r.path for r in discover(data).records][: args.limit]
        sizes = [p.stat().st_size for p in paths]
        per_image = measure(paths, args.image_size, args.repeats)
    decode = per_image["decode_s"]
    result = {
        "benchmark": "hash_cost",
        "note": args.note,
        "machine": machine(),
        "tree": {
            "data": str(args.data or f"synthetic, {len(paths)} images"),
            "images": len(paths),
            "mean_file_bytes": sum(sizes) / len(sizes),
            "total_bytes": sum(sizes),
        },
        "repeats": args.repeats,
        "per_image_seconds": per_image,
        "ratios": {
            "hash_vs_decode": per_image["hash_in_memory_s"] / decode,
            "decode_and_hash_vs_decode_minus_1": per_image["decode_and_hash_s"] / decode - 1,
            "blake2b_vs_decode": per_image["blake2b_in_memory_s"] / decode,
            "rerun_stat_vs_decode": per_image["stat_s"] / decode,
            "verify_content_vs_decode": per_image["read_and_hash_s"] / decode,
        },
        "hash_gb_per_s": sum(sizes) / len(sizes) / per_image["hash_in_memory_s"] / 1e9,
        "projection_10661_images": gpu_projection(per_image, 10661),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps({k: result[k] for k in ("ratios", "hash_gb_per_s", "projection_10661_images")}, indent=2)
    )


if __name__ == "__main__":
    main()
