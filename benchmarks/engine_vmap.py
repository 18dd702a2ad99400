"""The engine on one head definition: the hand-written stacked engine against ``torch.func.functional_call`` +
``vmap`` over the one ``Head`` (autograd, ``torch.optim.Adam``, the same random streams), on the real-size CV.

Both run `train_head` (5-fold patient CV + final head) on the real-size synthetic cache (10,661 images × 8
views × 2048, the real manifest's 73 patients, as benchmarks/cv_speed.py builds it) with ``--preset paper``
and the default preset, each run in a fresh process, the two engines alternated (A B A B ...) in one session
so that the shared machine's load falls on both alike; the load average is recorded before every run. The
figure is the ratio of median wall times (vmap over hand-written); the issue's rule: within 1.3x, switch to
vmap. The process CPU time (all threads) and the training time are recorded beside it: on a shared machine
they vary less with the load than the wall time.

    PYTHONPATH=$PWD python3 benchmarks/engine_vmap.py --out benchmarks/results/engine_vmap_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

ENGINES = ("stacked", "vmap")
THRESHOLD = 1.3


def child(cache: str, engine: str, preset: str, out: str) -> None:
    """One CV in this (fresh) process with ``engine`` as the training engine."""
    import fastall.training.engine as engine_module
    from fastall.training.config import TrainOptions
    from fastall.training.train_head import train_head

    engine_module.DEFAULT_ENGINE = engine
    options = TrainOptions(
        folds=5, seed=0, device="cpu", progress=False, overwrite=True, report=False, preset=preset
    )
    t0, c0 = time.perf_counter(), time.process_time()
    result = train_head(cache, out, options=options)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = result.metrics
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": cpu,
                "train_s": m["timings"]["train_s"],
                "precision": m["precision"],
                "cv_accuracy": m["summary"]["accuracy"],
            }
        )
    )


def run_one(cache: Path, engine: str, preset: str) -> dict:
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", str(cache), "--engine", engine, "--preset", preset]
        proc = subprocess.run(
            [*cmd, "--out", str(Path(tmp) / "run")],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
        )
    if proc.returncode != 0:
        raise SystemExit(f"{engine} {preset} failed: {proc.stderr[-2000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "load_before": load[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "fastall-bench" / "real_10661x8.h5"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--presets", nargs="+", default=["paper", "default"])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="stacked", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="paper", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.engine, args.preset, args.out)
        return
    from common import write_result
    from featcache import real_size_cache

    cache = real_size_cache(args.cache)
    load_before = os.getloadavg()
    runs = {p: {e: [] for e in ENGINES} for p in args.presets}
    for r in range(args.repeats):
        for preset in args.presets:
            for engine in ENGINES if r % 2 == 0 else ENGINES[::-1]:
                got = run_one(cache, engine, preset)
                runs[preset][engine].append(got)
                took = f"{got['wall_s']:.2f} s wall, {got['cpu_s']:.2f} s CPU"
                print(f"{preset} {engine} #{r}: {took} (load {got['load_before']:.1f})", flush=True)
        result = summary(runs, r + 1, load_before)
        write_result(args.out, result)  # after every round: a cut-short session keeps its finished rounds
    print(json.dumps({p: {k: v for k, v in d.items() if k != "runs"} for p, d in result["presets"].items()}))
    print(result["decision"])


def summary(runs: dict[str, dict[str, list[dict]]], rounds: int, load_before: tuple) -> dict:
    """Medians, ratios (vmap over hand-written) and the decision from the rounds run so far."""
    presets = {}
    for preset, by_engine in runs.items():
        median = {e: statistics.median(x["wall_s"] for x in by_engine[e]) for e in ENGINES}
        ratio = median["vmap"] / median["stacked"]
        cpu = {e: statistics.median(x["cpu_s"] for x in by_engine[e]) for e in ENGINES}
        presets[preset] = {
            "runs": by_engine,
            "median_wall_s": median,
            "median_train_s": {e: statistics.median(x["train_s"] for x in by_engine[e]) for e in ENGINES},
            "median_cpu_s": cpu,
            "ratio_vmap_over_stacked": ratio,
            "ratio_cpu_vmap_over_stacked": cpu["vmap"] / cpu["stacked"],
            "within_threshold": ratio <= THRESHOLD,
        }
    switch = all(p["within_threshold"] for p in presets.values())
    return {
        "benchmark": "engine_vmap",
        "device": "cpu",
        "cache": "real-size synthetic, 10661 x 8 x 2048, 73 patients (featcache.real_size_cache)",
        "order": "fresh process per run; per round every preset, its engines alternated A B / B A by round",
        "rounds": rounds,
        "threshold": THRESHOLD,
        "presets": presets,
        "load_average_before_after": [load_before, os.getloadavg()],
        "decision": "switch to vmap" if switch else "keep the hand-written engine",
    }


if __name__ == "__main__":
    main()
