"""The cost of nested tuning: `fastall train-head --tune GRID` (4 configurations) against the same
`fastall train-head` without it, in one run, on the same cache (issue 11's target: less than 3x).

Each command runs as a user runs it (a fresh ``python -m fastall`` process, the default preset, the HTML
report on), alternated, ``--repeats`` times each; the best wall time of each is kept. The training seconds
(metrics.json ``timings.train_s``: the engine alone, without cache load, probe or report) are given too.
Caches: a real-size synthetic one (10,661 images x 8 views x 2048, the real manifest's patients and labels;
``tests/featcache.py``) and, with ``--cache``, any others.

    PYTHONPATH=$PWD python3 benchmarks/tune_cost.py --out benchmarks/results/tune_cost_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from featcache import real_size_cache  # noqa: E402

from fastall.inference.bench import machine_info  # noqa: E402

GRID = "lr=1e-4,1e-3 weight_decay=0,1e-2"


def timed(cache: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "fastall", "train-head", str(cache), "--out", str(out), "--overwrite",
           "--device", "cpu", *extra]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {"wall_s": wall, "train_s": m["timings"]["train_s"], "cv_accuracy": m["summary"]["accuracy"]}


def one(cache: Path, repeats: int, tmp: Path, folds: int) -> dict:
    common = ["--folds", str(folds)]
    runs: dict[str, list[dict]] = {"single": [], "tune": []}
    for _ in range(repeats):
        runs["single"].append(timed(cache, tmp / "single", common))
        runs["tune"].append(timed(cache, tmp / "tune", [*common, "--tune", GRID]))
    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in runs.items()}
    row = {
        "cache": str(cache),
        "runs": runs,
        "single_wall_s": best["single"]["wall_s"],
        "tune_wall_s": best["tune"]["wall_s"],
        "wall_ratio": best["tune"]["wall_s"] / best["single"]["wall_s"],
        "train_ratio": min(r["train_s"] for r in runs["tune"]) / min(r["train_s"] for r in runs["single"]),
        "target_ratio": 3.0,
    }
    row["meets_target"] = row["wall_ratio"] < 3.0
    print(f"{cache.name}: single {row['single_wall_s']:.1f} s, tune {row['tune_wall_s']:.1f} s, "
          f"wall x{row['wall_ratio']:.2f}, training x{row['train_ratio']:.2f}", flush=True)  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, action="append", default=[], help="Extra caches to time.")
    parser.add_argument("--no-real-size", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/tune_cost_cpu.json")
    args = parser.parse_args()
    result = {"benchmark": "tune_cost", "grid": GRID, "settings": {k: str(v) for k, v in vars(args).items()},
              "machine": machine_info("cpu"), "caches": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        caches = list(args.cache)
        if not args.no_real_size:
            caches.append(real_size_cache(Path(tmp) / "real_size.h5"))
        for cache in caches:
            result["caches"].append(one(cache, args.repeats, Path(tmp), args.folds))
    result["machine"]["load_average_after"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
