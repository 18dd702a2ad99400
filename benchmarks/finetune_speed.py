"""`fastall finetune` from cached maps against end-to-end fine-tuning of the same stage, in one run.

(a) cached: one epoch of the engine (:func:`fastall.finetune.engine.fit`) reading the store's layer3 maps
    through the prefetch thread: layer4 forward + backward, pool, head, AdamW;
(b) end to end: the same epoch (same rows, views, batch, fp32, seed) from the image files through torch's
    DataLoader (:class:`fastall.finetune.pixels.PixelSource`): decode, resize, augment with the recorded view
    parameters, frozen layers 1-3 forward, then the same layer4 forward + backward and head.
Ratio (b)/(a); goal >= 4x on 2 CPU cores. Per-sample times give the C-NMC projection (10,661 images x 2
views per epoch). (c) streaming: peak RSS of one pass over a real-size store (C-NMC: 10,661 x 2 maps of
1024x14x14 fp16, ~8.6 GB, random values) read batch by batch with the prefetch thread, measured in a child
process; goal < 4 GB. Others share the CPU: the load average is recorded; ratios are what count.

    PYTHONPATH=$PWD python3 benchmarks/finetune_speed.py --out benchmarks/results/finetune_speed_cpu.json
"""

from __future__ import annotations  # noqa: I001 - fastall first: its OpenMP wait policy must precede torch

import fastall  # noqa: F401
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import write_result
from fastall.features.cut import recorded_cut
from fastall.features.maps import open_maps
from fastall.finetune.config import FinetuneConfig
from fastall.finetune.engine import fit, make_net
from fastall.finetune.pixels import PixelSource

CNMC_IMAGES, CNMC_VIEWS = 10_661, 2


def build_store(root: Path, images: int, size: int, backbone: str, map_views: int) -> Path:
    """A C-NMC-like tree of 450x450 BMPs and its maps store (`extract --maps layer3`)."""
    from benchmarks.extract_throughput import build_tree
    from fastall.features.extract import extract

    build_tree(root / "data", images)
    out = root / "maps.h5"
    extract(
        root / "data",
        out,
        views=map_views,
        image_size=size,
        weights="none",
        backbone=backbone,
        device="cpu",
        precision="fp32",
        maps="layer3",
        map_views=map_views,
    )
    return out


def epoch_seconds(store_path: Path, batch: int, workers: int, warm: int) -> dict:
    store = open_maps(store_path, load_features=True)
    cut = recorded_cut(store.cache.key_params, store.cache.attrs)
    kp = store.cache.key_params
    root = Path(store.cache.attrs["data_root"])
    pixels = PixelSource(
        cut.front,
        [root / p for p in store.cache.paths],
        store.cache.view_params,
        int(kp["image_size"]),
        (kp["mean"], kp["std"]),
        workers=workers,
    )
    cfg = FinetuneConfig(epochs=1, patience=None, batch_size=batch)
    rows = np.arange(store.cache.n_images)
    feats = torch.from_numpy(store.cache.features[:, 0].astype(np.float32))
    stats = (feats.mean(0), feats.std(0).clamp_min(1e-3))
    views = list(range(store.map_views))
    out = {}
    for name, source in (("cached", store), ("end_to_end", pixels), ("cached_again", store)):
        net = make_net(cut.stage, cfg, len(store.cache.class_names), stats, seed=0)
        fit(net, source, store.cache.labels, rows[:warm], cfg, views=views, seed=1)  # warm-up
        t0 = time.perf_counter()
        fit(net, source, store.cache.labels, rows, cfg, views=views, seed=0)
        out[name] = time.perf_counter() - t0
    out["samples"] = int(rows.size)
    return out


STREAM = """
import json, resource, sys, time
import numpy as np
from fastall.features.maps import open_maps
from fastall.finetune.engine import epoch_plan
store = open_maps(sys.argv[1])
rows = np.arange(store.cache.n_images)
plan = [b for v in range(store.map_views) for b in epoch_plan(rows, [v], int(sys.argv[2]), 0, v)]
t0, n = time.perf_counter(), 0
for maps in store.batches(plan):
    n += maps.shape[0]
print(json.dumps({"seconds": time.perf_counter() - t0, "maps": n,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


class _RandomRows:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape, self.rng = shape, np.random.default_rng(0)
        self.block = self.rng.standard_normal((64, *shape[1:]), dtype=np.float32).astype(np.float16)

    def rows(self):
        for i in range(self.shape[0]):
            yield self.block[i % 64]


def real_size_stream(folder: Path, images: int, batch: int) -> dict:
    """Peak RSS (child process) of one streamed epoch over a store of ``images`` x 2 views of 1024x14x14."""
    from fastall.features.cache import ImageRows, write_cache

    path, n, shape = folder / "real_size.h5", images, (images, CNMC_VIEWS, 1024, 14, 14)
    t0 = time.perf_counter()
    write_cache(
        path,
        features=np.zeros((n, CNMC_VIEWS, 2048), np.float16),
        rows=ImageRows(
            np.arange(n) % 2,
            [f"P{i % 73}" for i in range(n)],
            [f"img_{i:05d}.bmp" for i in range(n)],
            ["fold_0"] * n,
        ),
        class_names=["hem", "all"],
        view_params=np.zeros((n, CNMC_VIEWS, 16), np.float32),
        view_param_names=[f"p{i}" for i in range(16)],
        key_params={
            "backbone": "resnet50",
            "maps": "layer3",
            "map_views": CNMC_VIEWS,
            "map_shape": [1024, 14, 14],
        },
        provenance={},
        maps=_RandomRows(shape),
    )
    write_s = time.perf_counter() - t0
    size = path.stat().st_size
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run(
        [sys.executable, "-c", STREAM, str(path), str(batch)], capture_output=True, text=True, env=env
    )
    path.unlink()
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        **result,
        "store_bytes": size,
        "write_s": write_s,
        "read_gb_per_s": size / 1e9 / result["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--real-size-images", type=int, default=CNMC_IMAGES, help="0: skip the RSS pass")
    parser.add_argument("--scratch", default=None, help="Folder for the stores [a temporary one].")
    parser.add_argument("--out", default="benchmarks/results/finetune_speed_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        root = Path(tmp)
        store = build_store(root, args.images, args.size, args.backbone, CNMC_VIEWS)
        times = epoch_seconds(store, args.batch, args.workers, warm=args.batch)
        stream = real_size_stream(root, args.real_size_images, 32) if args.real_size_images else None
    cached = min(times["cached"], times["cached_again"])
    per = {"cached": cached / times["samples"], "end_to_end": times["end_to_end"] / times["samples"]}
    samples = CNMC_IMAGES * CNMC_VIEWS
    result = {
        "benchmark": "finetune_speed",
        "what": "one epoch of finetune (layer4 + head) from cached layer3 maps vs end to end from the images",
        "backbone": args.backbone,
        "image_size": args.size,
        "images": args.images,
        "views_per_image": CNMC_VIEWS,
        "samples_per_epoch": times["samples"],
        "batch_size": args.batch,
        "precision": "fp32",
        "threads": args.threads,
        "dataloader_workers": args.workers,
        "epoch_s": times,
        "speedup_end_to_end_over_cached": times["end_to_end"] / cached,
        "goal_speedup_cpu": 4.0,
        "per_sample_s": per,
        "cnmc_projection": {
            "samples": samples,
            "cached_epoch_s": per["cached"] * samples,
            "end_to_end_epoch_s": per["end_to_end"] * samples,
        },
        "real_size_stream": stream,
        "goal_peak_rss_bytes": 4 * 2**30,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))
    write_result(args.out, result)


if __name__ == "__main__":
    main()
