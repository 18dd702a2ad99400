"""`fastall sweep` throughput on a real-size cache, against this machine's matmul peak and sequential
train-head runs of the same configurations, measured in one run.

Configurations are at the paper's settings (5 epochs, batch 32, hidden 512; ~7,680 training images a fold)
varying lr × dropout × weight decay. Reported: configurations/s and configurations × folds in the sweep's
wall time; achieved head GFLOP/s (training forward + weight-gradient GEMMs + validation forwards, counted
from the splits) as a fraction of the bf16 and fp32 matmul peak measured here on a 1024×2048×512 matmul
(and a large square one); configurations/s against sequential `train_head` runs of some of the same configs.
Goals: GPU >= 100 configurations × 5 folds within 10 s; 2-core CPU >= 50% of peak and >= 3x sequential.

    PYTHONPATH=$PWD python3 benchmarks/sweep_speed.py --device cpu \
        --out benchmarks/results/sweep_speed_cpu.json
"""

from __future__ import annotations  # noqa: I001 - fastall first: its OpenMP wait policy must precede torch

import fastall  # noqa: F401
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from featcache import real_size_cache  # noqa: E402

from fastall.features.cache import read_cache  # noqa: E402
from fastall.system.machine import machine_info  # noqa: E402
from fastall.training.config import HeadConfig, TrainOptions  # noqa: E402
from fastall.training.splits import make_splits  # noqa: E402
from fastall.training.sweep import sweep  # noqa: E402
from fastall.training.train_head import train_head  # noqa: E402

GPU_GRID = (
    "lr=3e-5,1e-4,3e-4,1e-3,3e-3 dropout=0.2,0.35,0.5,0.65 "
    "weight_decay=0,1e-5,1e-4,1e-3,1e-2"
)  # 100 configurations
CPU_GRID = "lr=1e-4,3e-4,1e-3 dropout=0.3,0.5"  # 6 configurations


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(
    device: torch.device, dtype: torch.dtype, m: int, k: int, n: int, seconds: float = 1.0
) -> float:
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b
        reps += 10
        _sync(device)
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def head_gflop(
    cache: Path, configs: int, epochs: int, batch: int, hidden: int, dim: int, with_final: bool
) -> float:
    """Head GEMM work of a CV: per step forward + weight gradient (2 × 2·B·D·H, plus the small fc2 GEMMs),
    per epoch a validation forward of each fold's validation images."""
    c = read_cache(cache, load_features=False)
    sp = make_splits(c.labels, c.patients, c.sources, folds=5, seed=0)
    steps = sum(-(-len(tr) // batch) for tr, _ in sp.folds) + (-(-len(sp.pool) // batch) if with_final else 0)
    per_step = 2 * (2 * batch * dim * hidden) + 3 * (2 * batch * hidden * 2)
    val = sum(len(va) for _, va in sp.folds) * 2 * dim * hidden
    return configs * epochs * (steps * per_step + val) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "fastall-bench" / "real_10661x8.h5"))
    ap.add_argument("--grid", default=None, help="Sweep grid [100 configurations on cuda, 6 on cpu].")
    ap.add_argument("--sequential", type=int, default=None, help="train-head runs for the baseline [3 / 2].")
    args = ap.parse_args()
    device = torch.device(args.device)
    load_before = os.getloadavg()
    k = args.sequential or (3 if device.type == "cuda" else 2)
    cache = real_size_cache(args.cache)

    peaks = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        peaks[f"{name}_1024x2048x512"] = matmul_gflops(device, dtype, 1024, 2048, 512)
        if device.type == "cuda":
            peaks[f"{name}_8192_cubed"] = matmul_gflops(device, dtype, 8192, 8192, 8192)
    print(f"matmul peaks GFLOP/s: {peaks}", flush=True)

    text = args.grid or (GPU_GRID if device.type == "cuda" else CPU_GRID)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        options = TrainOptions(folds=5, device=args.device, progress=False, report=False)
        res = sweep(cache, Path(tmp) / "sweep", grid=text, options=options)
        sweep_wall = time.perf_counter() - t0
        configs = len(res.results["configs"])
        train_s = res.results["timings"]["train_s"]
        print(
            f"sweep: {configs} configs × 5 folds in {sweep_wall:.2f} s wall (train {train_s:.2f} s)",
            flush=True,
        )

        seq = []
        for row in sorted(res.results["configs"], key=lambda r: r["config"])[:k]:
            t1 = time.perf_counter()
            train_head(cache, Path(tmp) / f"seq{len(seq)}", HeadConfig(**row["params"]), options)
            seq.append(time.perf_counter() - t1)
        print(f"sequential train-head: {seq}", flush=True)

    gflop = head_gflop(cache, configs, 5, 32, 512, 2048, with_final=False)
    achieved = gflop / train_s
    seq_rate = len(seq) / sum(seq)
    result = {
        "benchmark": "sweep_speed",
        "machine": machine_info(device),
        "device": args.device,
        "torch": torch.__version__,
        "precision": res.results["precision"],
        "load_average_before_after": [load_before, os.getloadavg()],
        "settings": {
            "epochs": 5,
            "batch_size": 32,
            "hidden": 512,
            "folds": 5,
            "images": 10661,
            "views": 8,
            "dim": 2048,
            "grid": text,
        },
        "configs": configs,
        "config_folds": configs * 5,
        "sweep_wall_s": sweep_wall,
        "sweep_train_s": train_s,
        "sweep_load_cache_s": res.results["timings"]["load_cache_s"],
        "configs_per_s": configs / sweep_wall,
        "head_gflop": gflop,
        "achieved_gflop_per_s": achieved,
        "matmul_peak_gflop_per_s": peaks,
        "fraction_of_bf16_peak": achieved / peaks["bf16_1024x2048x512"],
        "fraction_of_fp32_peak": achieved / peaks["fp32_1024x2048x512"],
        "sequential_train_head_s": seq,
        "sequential_configs_per_s": seq_rate,
        "speedup_vs_sequential": (configs / sweep_wall) / seq_rate,
        "goals": {
            "gpu_100_configs_x5_folds_s": 10.0,
            "cpu_fraction_of_peak": 0.5,
            "cpu_speedup_vs_sequential": 3.0,
        },
    }
    if device.type == "cuda":
        result["fraction_of_bf16_peak_8192"] = achieved / peaks["bf16_8192_cubed"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
