"""Regenerate docs/report.png: a demo-like run (synthetic data, random-init backbone) and a headless-Chromium
screenshot of its HTML report.

python scripts/report_screenshot.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser import chromium, screenshot  # noqa: E402


def _run(*args: str) -> None:
    """The real command line (so that the run records `fastall ...` as the command that made it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "fastall", *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", default=None, help="Make the run here instead of a temporary folder.")
    ap.add_argument("--out", default=str(ROOT / "docs" / "report.png"))
    args = ap.parse_args()
    if chromium() is None:
        raise SystemExit("Chromium is needed: apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp)
        _run("synth", str(base / "data"), "--patients-per-class", "8", "--images-per-patient", "10",
             "--size", "96", "--seed", "0")  # fmt: skip
        _run("extract", str(base / "data"), "--out", str(base / "cache.h5"), "--weights", "none",
             "--image-size", "64", "--views", "2", "--device", "cpu")  # fmt: skip
        _run("train-head", str(base / "cache.h5"), "--out", str(base / "run"), "--folds", "5",
             "--device", "cpu", "--overwrite")  # fmt: skip
        raw = base / "report-full.png"
        screenshot(base / "run" / "report" / "index.html", raw, width=1200, height=3000)
        from PIL import Image

        Image.open(raw).convert("RGB").quantize(colors=128).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
