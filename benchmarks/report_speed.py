"""The HTML report of a real-size run (10,661 images, 5 folds): how long `fastall report` takes, and what the
report adds to `train-head`. Goal: <= 15 s on 2 CPU cores.

Measured in one run, each as a fresh process through the CLI (imports included, as a user waits for them):
  (a) baseline: `train-head --folds 5 --no-report` on a real-size synthetic cache (the real manifest's
      patients and labels, 10,661 x 8 views x 2048);
  (b) `train-head --folds 5` writing its report (the report's cost inside train-head = (b) - (a));
  (c) `fastall report RUN --data IMAGES`: the whole report remade from the run folder, cell grids included
      (IMAGES: one 450x450 BMP linked at every recorded path, so that the grids decode real-size images);
  (d) the same in one process, split into imports and `write_report` itself.
Ratios: (c) / (a), and (b) - (a) over (a).

    PYTHONPATH=$PWD python3 benchmarks/report_speed.py --out benchmarks/results/report_speed_cpu.json
    PYTHONPATH=$PWD python3 benchmarks/report_speed.py --small --out /tmp/report_speed_small.json   # smoke
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from featcache import make_feature_cache, real_size_cache  # noqa: E402

from fastall.inference.bench import machine_info  # noqa: E402

GOAL_S = 15.0
CHILD = """
import json, sys, time
t0 = time.perf_counter()
from fastall.reporting.run_report import write_report
t1 = time.perf_counter()
made = write_report(sys.argv[1], sys.argv[2])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "report_s": t2 - t1, "figures": made.figures, "notes": made.notes}))
"""


def _env() -> dict:
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}


def _timed(args: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} ... failed: {(proc.stderr or proc.stdout)[-2000:]}")
    return wall, proc.stdout + proc.stderr


def _cli(*args: str) -> tuple[float, str]:
    return _timed([sys.executable, "-m", "fastall", *args])


def _image_root(run: Path, root: Path) -> int:
    """One 450x450 cell image linked at every path in predictions.csv."""
    import csv

    from PIL import Image

    yy, xx = np.mgrid[:450, :450]
    cell = np.zeros((450, 450, 3), np.uint8)
    cell[(yy - 225) ** 2 + (xx - 225) ** 2 < 120**2] = (150, 90, 170)
    one = root / "cell.bmp"
    root.mkdir(parents=True)
    Image.fromarray(cell).save(one)
    with open(run / "predictions.csv", newline="") as fh:
        paths = [row["path"] for row in csv.DictReader(fh)]
    for rel in paths:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(one.absolute())
    return len(paths)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "fastall-bench" / "real_10661x8.h5"))
    ap.add_argument("--small", action="store_true", help="Smoke test: a 20-patient cache instead.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.small:
            cache = make_feature_cache(tmp / "small.h5", patients=(8, 12), views=4, dim=64)
        else:
            cache = real_size_cache(args.cache)
        base = ["train-head", str(cache), "--folds", "5", "--device", "cpu"]
        no_report, _ = _cli(*base, "--out", str(tmp / "plain"), "--no-report")
        with_report, _ = _cli(*base, "--out", str(tmp / "run"))
        run = tmp / "run"
        metrics = json.loads((run / "metrics.json").read_text())
        images = _image_root(run, tmp / "images")
        report_cli, out = _cli("report", str(run), "--data", str(tmp / "images"))
        _, child = _timed([sys.executable, "-c", CHILD, str(run), str(tmp / "images")])
        split = json.loads(child.strip().splitlines()[-1])
    result = {
        "benchmark": "report_speed",
        "machine": machine_info("cpu"),
        "run": {
            "images": metrics["cache"]["images"],
            "views": metrics["cache"]["views"],
            "dim": metrics["cache"]["dim"],
            "folds": len(metrics["folds"]),
            "test_images": metrics["splits"]["test_images"],
            "predictions": images,
            "has_history": "history" in metrics,
        },
        "seconds": {
            "train_head_no_report": no_report,
            "train_head_with_report": with_report,
            "report_in_train_head": with_report - no_report,
            "report_cli": report_cli,
            "report_imports": split["import_s"],
            "write_report": split["report_s"],
        },
        "figures": split["figures"],
        "notes": split["notes"],
        "goal_s": GOAL_S,
        "meets_goal": report_cli <= GOAL_S,
        "ratios": {
            "report_cli_over_train_head": report_cli / no_report,
            "report_overhead_in_train_head": (with_report - no_report) / no_report,
        },
        "small_smoke_test": args.small,
        "cli_output_tail": out.strip().splitlines()[-1],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["seconds"], indent=2), f"goal <= {GOAL_S} s: {result['meets_goal']}")


if __name__ == "__main__":
    main()
