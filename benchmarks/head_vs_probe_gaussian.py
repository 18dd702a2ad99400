"""The default preset against its probe where the probe is the right model: linear Gaussian features.

``tests/featcache.py`` features (class mean + per-patient offset + noise, 256 dimensions at a ResNet-like
scale) with patient effects as large as the class effect, 16 patients of 8 images, 4 folds, `--test none`:
for seeds 5-8 and three (separation, patient spread) settings, the default and the paper presets and the
linear probe in one run each. A stress test of the head-vs-probe bar (issue 11), reported as measured.

    PYTHONPATH=$PWD python3 benchmarks/head_vs_probe_gaussian.py \
        --out benchmarks/results/head_vs_probe_gaussian_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from featcache import make_feature_cache  # noqa: E402

from fastall.inference.bench import machine_info  # noqa: E402
from fastall.training.config import TrainOptions  # noqa: E402
from fastall.training.presets import apply_preset  # noqa: E402
from fastall.training.train_head import train_head  # noqa: E402

SETTINGS = ((0.5, 1.0), (0.7, 1.0), (1.0, 1.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="5,6,7,8")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in map(int, args.seeds.split(",")):
            for separation, spread in SETTINGS:
                path = Path(tmp) / f"{seed}-{separation}.h5"
                cache = make_feature_cache(path, patients=(8, 8), images_per_patient=8, dim=256,
                                           separation=separation, patient_spread=spread, loc=20.0,
                                           scale=20.0, seed=seed)  # fmt: skip
                row = {"seed": seed, "separation": separation, "patient_spread": spread}
                for name in ("default", "paper"):
                    config, protocol = apply_preset(name, {}, {})
                    options = TrainOptions(folds=4, test="none", device="cpu", precision="fp32", report=False,
                                           progress=False, overwrite=True, **protocol)  # fmt: skip
                    m = train_head(cache, Path(tmp) / "run", config, options).metrics
                    row[name] = m["summary"]["accuracy"]
                row["probe"] = m["probe"]["summary"]["accuracy"]
                row["default_minus_probe"] = row["default"] - row["probe"]
                row["paper_minus_probe"] = row["paper"] - row["probe"]
                print(row, flush=True)
                rows.append(row)
    gaps = [r["default_minus_probe"] for r in rows]
    result = {
        "benchmark": "head_vs_probe_gaussian",
        "machine": machine_info("cpu"),
        "runs": rows,
        "default_worst": min(gaps),
        "default_within_0.01": sum(g >= -0.01 for g in gaps),
        "runs_total": len(rows),
        "paper_worst": min(r["paper_minus_probe"] for r in rows),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}: default worst {result['default_worst']:+.3f}")


if __name__ == "__main__":
    main()
