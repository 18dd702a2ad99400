"""Patient-level 5-fold CV + final head from the cache, against the paper's end-to-end path, in one run.

(a) `train_head` on a real-size synthetic cache (10,661 images × 8 views × 2048, the real manifest's patients
    and labels), in a fresh process: wall time (cache load included), training time, peak RSS, precision.
    Goals on the 2-core CPU: < 10 s, < 2 GB. The paper: about 12 min a fold on an RTX 3080, ~60 min.
(b) The same CV (5 folds + final head, same epochs, batch 32, Adam 1e-4) through the end-to-end path on
    a subset of in-memory images (40 images, 2 epochs on the CPU; 400 images, 5 epochs on a GPU): every
    epoch, image -> `preprocess` with the view's augmentation -> frozen backbone -> head (as the paper
    trains), validation on view 0 through the backbone too; against the cached path's training on that
    subset (features extracted once, timed separately). Ratios: on the subset, and projected to the full
    size (end-to-end seconds per image pass × the full CV's image passes, over (a)).
    Goal: >= 100x.

    PYTHONPATH=$PWD python3 benchmarks/cv_speed.py --device cpu --out benchmarks/results/cv_speed_cpu.json
"""

from __future__ import annotations  # noqa: I001 - fastall first: its OpenMP wait policy must precede torch

import fastall  # noqa: F401
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from featcache import real_size_cache  # noqa: E402

from fastall.head import Head  # noqa: E402
from fastall.system.devices import resolve_precision  # noqa: E402
from fastall.system.machine import machine_info  # noqa: E402
from fastall.training.config import HeadConfig, StackData, TrainOptions  # noqa: E402
from fastall.training.engine import train_stacks  # noqa: E402
from fastall.training.splits import make_splits  # noqa: E402
from fastall.training.streams import epoch_order  # noqa: E402

PAPER_CV_S = 5 * 12 * 60


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def child_cv(cache: str, device: str, out: str) -> None:
    """(a) in a fresh process, so that ru_maxrss is this run's peak alone."""
    from fastall.training.train_head import train_head

    t0 = time.perf_counter()
    options = TrainOptions(folds=5, seed=0, device=device, progress=False, overwrite=True, report=False)
    result = train_head(cache, out, options=options)
    wall = time.perf_counter() - t0
    m = result.metrics
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available() and device != "cpu":
        peak_gpu = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_gpu = None
    print(
        json.dumps(
            {
                "wall_s": wall,
                "timings": m["timings"],
                "precision": m["precision"],
                "device": m["device"],
                "peak_rss_mb": peak,
                "peak_gpu_mb": peak_gpu,
                "cv_accuracy": m["summary"]["accuracy"],
                "test_accuracy": m["test"]["final"]["accuracy"] if m["test"] else None,
            }
        )
    )


def full_cv(cache: Path, device: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child-cv",
                str(cache),
                "--device",
                device,
                "--out",
                str(Path(tmp) / "run"),
            ],
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            },
        )
    if proc.returncode != 0:
        raise SystemExit(f"child CV failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def subset_images(n_patients: int, per_patient: int, side: int, seed: int = 0):
    """In-memory uint8 cell-like images (a dark background, one bright disc), patients split by class."""
    g = torch.Generator().manual_seed(seed)
    n = n_patients * per_patient
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    images = torch.zeros((n, 3, side, side), dtype=torch.uint8)
    for i in range(n):
        cy, cx = (torch.rand(2, generator=g) * side * 0.4 + side * 0.3).tolist()
        r = side * (0.15 + 0.1 * float(torch.rand(1, generator=g)))
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        color = torch.randint(80, 255, (3, 1, 1), generator=g, dtype=torch.uint8)
        images[i] = disc * color
    patients = np.array([f"P{i // per_patient}" for i in range(n)], dtype=object)
    labels = np.array([(i // per_patient) % 2 for i in range(n)], dtype=np.int64)
    return images, patients, labels


def _backbone_features(
    backbone, images: torch.Tensor, params: torch.Tensor | None, size: int, device: torch.device, amp: bool
) -> torch.Tensor:
    from fastall.preprocess import preprocess

    x = preprocess(images.to(device), size, view_params=None if params is None else params.to(device))
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        return backbone(x.contiguous(memory_format=torch.channels_last)).float()


def end_to_end_cv(backbone, images, labels, splits, *, views, epochs, size, device, amp, seed=0) -> dict:
    """The paper's training: the frozen backbone runs on every augmented image of every epoch."""
    from fastall.features.augment import draw_view_params

    params_all = torch.from_numpy(draw_view_params(seed, np.arange(len(labels)), views))
    row_sets = [(tr, va) for tr, va in splits.folds] + [(splits.pool, np.empty(0, dtype=np.int64))]
    passes = 0
    t0 = time.perf_counter()
    for f, (train, val) in enumerate(row_sets):
        torch.manual_seed(seed + f)
        head = Head(2048, 512, 0.5, 2).to(device)
        opt = torch.optim.Adam(head.parameters(), lr=1e-4)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=2)
        for epoch in range(epochs):
            rows, view = epoch_order(seed, f, epoch, train, views)
            head.train()
            for s in range(0, len(rows), 32):
                r = torch.as_tensor(rows[s : s + 32])
                p = params_all[r, torch.as_tensor(view[s : s + 32])]
                feats = _backbone_features(backbone, images[r], p, size, device, amp)
                y = torch.as_tensor(labels[rows[s : s + 32]], device=device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = torch.nn.functional.cross_entropy(head(feats), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                passes += len(r)
            if len(val):
                head.eval()
                feats = _backbone_features(backbone, images[torch.as_tensor(val)], None, size, device, amp)
                with torch.no_grad():
                    y = torch.as_tensor(labels[val]).to(device)
                    vl = torch.nn.functional.cross_entropy(head(feats), y)
                sched.step(float(vl))
                passes += len(val)
    _sync(device)
    return {"seconds": time.perf_counter() - t0, "image_passes": passes}


def extract_subset(backbone, images, views, size, device, amp, seed=0) -> np.ndarray:
    from fastall.features.augment import draw_view_params

    params = torch.from_numpy(draw_view_params(seed, np.arange(len(images)), views))
    out = np.empty((len(images), views, 2048), dtype=np.float16)
    for v in range(views):
        for s in range(0, len(images), 32):
            p = None if v == 0 else params[s : s + 32, v]
            f = _backbone_features(backbone, images[s : s + 32], p, size, device, amp)
            out[s : s + 32, v] = f.cpu().numpy()
    return out


def full_cv_passes(cache: Path, epochs: int) -> int:
    """Image passes through the backbone of the paper's protocol on the full cache: train + val per epoch."""
    from fastall.features.cache import read_cache

    c = read_cache(cache, load_features=False)
    sp = make_splits(c.labels, c.patients, c.sources, folds=5, seed=0)
    per_epoch = sum(len(tr) + len(va) for tr, va in sp.folds) + len(sp.pool)
    return per_epoch * epochs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "fastall-bench" / "real_10661x8.h5"))
    ap.add_argument("--subset-patients", type=int, default=None, help="[40 on cuda, 10 on cpu]")
    ap.add_argument("--subset-per-patient", type=int, default=None, help="[10 on cuda, 4 on cpu]")
    ap.add_argument("--image-side", type=int, default=450)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--e2e-epochs", type=int, default=None, help="End-to-end epochs [5 on cuda, 2 on cpu].")
    ap.add_argument("--views", type=int, default=4, help="Views of the subset cache.")
    ap.add_argument("--child-cv", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_cv:
        child_cv(args.child_cv, args.device, args.out)
        return
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.e2e_epochs = args.e2e_epochs or (5 if gpu else 2)
    args.subset_patients = args.subset_patients or (40 if gpu else 10)
    args.subset_per_patient = args.subset_per_patient or (10 if gpu else 4)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    cache = real_size_cache(args.cache)
    make_s = time.perf_counter() - t0
    a = full_cv(cache, args.device)
    print(
        f"(a) full CV: {a['wall_s']:.2f} s wall, train {a['timings']['train_s']:.2f} s, "
        f"peak RSS {a['peak_rss_mb']:.0f} MB, {a['precision']}",
        flush=True,
    )

    from fastall.features.backbone import load_backbone

    backbone, _ = load_backbone("none", seed=0)
    backbone = backbone.to(device)
    amp = resolve_precision("auto", device) == "bf16"
    images, patients, labels = subset_images(args.subset_patients, args.subset_per_patient, args.image_side)
    sources = np.array(["fold_0"] * len(labels), dtype=object)
    splits = make_splits(labels, patients, sources, folds=5, test="none")
    _backbone_features(backbone, images[:2], None, args.image_size, device, amp)  # warm-up
    e2e = end_to_end_cv(
        backbone,
        images,
        labels,
        splits,
        views=args.views,
        epochs=args.e2e_epochs,
        size=args.image_size,
        device=device,
        amp=amp,
    )
    print(f"(b) end-to-end CV on {len(labels)} images: {e2e['seconds']:.2f} s", flush=True)
    t1 = time.perf_counter()
    feats = extract_subset(backbone, images, args.views, args.image_size, device, amp)
    _sync(device)
    extract_s = time.perf_counter() - t1
    data = StackData(torch.from_numpy(feats).to(device), labels, 2, splits.folds, splits.pool)
    cfg, prec = HeadConfig(epochs=args.e2e_epochs), resolve_precision("auto", device)
    train_stacks(data, [cfg], precision=prec, final=True)  # warm-up
    _sync(device)
    t2 = time.perf_counter()
    train_stacks(data, [cfg], precision=prec, final=True)
    _sync(device)
    cached_s = time.perf_counter() - t2
    per_pass = e2e["seconds"] / e2e["image_passes"]
    projected = per_pass * full_cv_passes(cache, 5)
    result = {
        "benchmark": "cv_speed",
        "machine": machine_info(device),
        "device": args.device,
        "torch": torch.__version__,
        "load_average_before_after": [load_before, os.getloadavg()],
        "a_full_cv": {
            "images": 10661,
            "views": 8,
            "dim": 2048,
            "folds": 5,
            "epochs": 5,
            "batch_size": 32,
            "hidden": 512,
            **a,
            "goal_s": 10.0,
            "goal_peak_rss_mb": 2048,
            "vs_paper_60_min": PAPER_CV_S / a["wall_s"],
            "cache_build_s": make_s,
        },
        "b_end_to_end": {
            "subset_images": len(labels),
            "image_size": args.image_size,
            "epochs": args.e2e_epochs,
            "backbone": "resnet50 random-init (weights none)",
            "amp_bf16": amp,
            "end_to_end_s": e2e["seconds"],
            "end_to_end_image_passes": e2e["image_passes"],
            "end_to_end_s_per_image_pass": per_pass,
            "cached_train_s": cached_s,
            "one_time_extract_s": extract_s,
            "ratio_subset": e2e["seconds"] / cached_s,
            "ratio_subset_with_extract": e2e["seconds"] / (cached_s + extract_s),
            "projected_end_to_end_full_cv_s": projected,
            "ratio_full_size": projected / a["wall_s"],
            "goal_ratio": 100.0,
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
