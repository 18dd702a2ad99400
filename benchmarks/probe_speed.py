"""The linear-probe baseline's cost against train-head's, on the same real-size cache and splits, in one run.

A real-size synthetic cache (10,661 images x 8 views x 2048, the real manifest's patients and labels, as
`cv_speed.py`), then `train_head` with its defaults (5 folds + holdout test) and `probe_cache` on the same
splits: wall and CPU seconds of each and the probe's ratio against train-head. Goal: the probe does not
dominate train-head's time (ratio well under 1 is the aim).

    PYTHONPATH=$PWD python3 benchmarks/probe_speed.py --out benchmarks/results/probe_speed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from featcache import real_size_cache  # noqa: E402

from fastall.features.cache import read_cache  # noqa: E402
from fastall.inference.bench import machine_info  # noqa: E402
from fastall.training.probe import C_GRID, INNER_FOLDS, probe_cache  # noqa: E402
from fastall.training.splits import make_splits  # noqa: E402
from fastall.training.train_head import train_head  # noqa: E402


def timed(fn, *args, **kwargs) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "fastall-real-size-8v.h5")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--inner-folds", type=int, default=INNER_FOLDS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/probe_speed_cpu.json")
    args = parser.parse_args()
    real_size_cache(args.cache, views=args.views)
    info = machine_info("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        run, head_wall, head_cpu = timed(
            train_head, args.cache, Path(tmp) / "run", device="cpu", progress=False, overwrite=True
        )
    cache, load_s, _ = timed(read_cache, args.cache)
    splits = make_splits(cache.labels, cache.patients, cache.sources, folds=5, test="holdout", seed=0)
    probe, probe_wall, probe_cpu = timed(probe_cache, cache, splits, inner_folds=args.inner_folds)
    result = {
        "settings": {"cache": str(args.cache), "views": args.views, "inner_folds": args.inner_folds},
        "machine": info | {"load_average_after": list(os.getloadavg())},
        "train_head": {
            "wall_s": head_wall,
            "cpu_s": head_cpu,
            "timings": run.metrics["timings"],
            "cv_accuracy": run.summary["accuracy"],
        },
        "probe": {
            "wall_s": probe_wall,
            "cpu_s": probe_cpu,
            "cache_load_s": load_s,
            "c_grid": list(C_GRID),
            "chosen_c": [row["c"] for row in probe.folds],
            "cv_accuracy": probe.summary["accuracy"],
            "test_accuracy": probe.test["accuracy"] if probe.test else None,
        },
        "probe_over_train_head": {"wall": probe_wall / head_wall, "cpu": probe_cpu / head_cpu},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["probe_over_train_head"]), f"head {head_wall:.1f} s, probe {probe_wall:.1f} s")


if __name__ == "__main__":
    main()
