"""Default `train-head` against the linear-probe baseline, on the same cache and folds, in one run (issue 11).

Three kinds of synthetic data, each easy (the demo's margin) and hard (margin 0.5, patient effects 2x):
  light   generic 2-class tree on a light background (the fill matters: also extracted with --fill black);
  small   the C-NMC tree (no prelim), 5 patients per class of about 20 images (about 20 images per class per
          fold);
  4class  generic 4-class tree on a smear background.
Each: synth -> extract (random-init ResNet-50, `--weights none`) -> `train_head` with its defaults and
`--test none --folds 5` -> `probe_cache` on the same splits. Reports mean CV accuracy and AUC of both, the
gap (head - probe), and the feature shift between augmented views and view 0 (standardised mean difference).

    PYTHONPATH=$PWD python3 benchmarks/head_vs_probe.py --out benchmarks/results/head_vs_probe_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastall.data.cells import appearance  # noqa: E402
from fastall.data.synth import GENERIC_PATIENT_REGEX, synthesize  # noqa: E402
from fastall.features.cache import read_cache  # noqa: E402
from fastall.features.extract import extract  # noqa: E402
from fastall.inference.bench import machine_info  # noqa: E402
from fastall.training.metrics import json_safe  # noqa: E402
from fastall.training.probe import probe_cache  # noqa: E402
from fastall.training.splits import make_splits  # noqa: E402
from fastall.training.train_head import train_head  # noqa: E402

KINDS = {
    "light": {"layout": "generic", "patients_per_class": 10, "images_per_patient": 10, "background": "light"},
    "small": {"layout": "cnmc", "patients_per_class": 5, "images_per_patient": 20, "background": "black"},
    "4class": {"layout": "generic", "classes": 4, "patients_per_class": 6, "images_per_patient": 10,
               "background": "smear"},
}  # fmt: skip


def feature_shift(features: np.ndarray) -> float:
    """Mean over dimensions of |mean(augmented views) - mean(view 0)| / pooled std."""
    base = features[:, 0].astype(np.float64)
    aug = features[:, 1:].reshape(-1, features.shape[2]).astype(np.float64)
    pooled = np.sqrt((aug.var(0) + base.var(0)) / 2)
    live = pooled > 1e-6
    return float((np.abs(aug.mean(0) - base.mean(0))[live] / pooled[live]).mean())


def one(kind: str, difficulty: str, fill: str, args: argparse.Namespace, tmp: Path) -> dict:
    spec = dict(KINDS[kind])
    background = spec.pop("background")
    data = tmp / f"{kind}-{difficulty}"
    if not data.exists():
        synthesize(
            data,
            size=args.side,
            seed=args.seed,
            prelim=False,
            look=appearance(background, difficulty),
            **spec,
        )
    cache = tmp / f"{kind}-{difficulty}-{fill}.h5"
    regex = GENERIC_PATIENT_REGEX if spec["layout"] == "generic" else None
    t0 = time.perf_counter()
    extract(data, cache, views=args.views, image_size=args.size, weights="none", device="cpu", fill=fill,
            include=(), patient_regex=regex, progress=False, seed=args.seed)  # fmt: skip
    extract_s = time.perf_counter() - t0
    run = train_head(cache, tmp / "run", folds=5, test="none", seed=args.seed, device="cpu", progress=False,
                     overwrite=True)  # fmt: skip
    c = read_cache(cache)
    splits = make_splits(c.labels, c.patients, c.sources, folds=5, test="none", seed=args.seed)
    probe = probe_cache(c, splits)
    head_acc, probe_acc = run.summary["accuracy"], probe.summary["accuracy"]
    row = {
        "kind": kind,
        "difficulty": difficulty,
        "fill": fill,
        "images": c.n_images,
        "patients": len(set(c.patients)),
        "classes": len(c.class_names),
        "head_cv_accuracy": head_acc,
        "head_cv_auc": run.summary["auc"],
        "head_fold_accuracy": [f["accuracy"] for f in run.folds],
        "probe_cv_accuracy": probe_acc,
        "probe_cv_auc": probe.summary["auc"],
        "probe_fold_accuracy": [f["accuracy"] for f in probe.folds],
        "probe_c": [f["c"] for f in probe.folds],
        "head_minus_probe": head_acc - probe_acc,
        "feature_shift_smd": feature_shift(c.features),
        "extract_s": extract_s,
        "train_head_s": run.metrics["timings"]["total_s"],
        "probe_s": probe.seconds,
    }
    print(
        f"{kind:7s} {difficulty:5s} fill={fill:6s} head {head_acc:.3f} probe {probe_acc:.3f} "
        f"gap {head_acc - probe_acc:+.3f} shift {row['feature_shift_smd']:.3f}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=128, help="Synthetic image side.")
    parser.add_argument("--size", type=int, default=96, help="Backbone input size.")
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--difficulties", default="easy,hard")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/head_vs_probe_cpu.json")
    args = parser.parse_args()
    result = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "machine": machine_info("cpu"),
        "runs": [],
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for difficulty in args.difficulties.split(","):
            for kind in args.kinds.split(","):
                fills = ["auto", "black"] if kind == "light" else ["auto"]
                for fill in fills:
                    result["runs"].append(one(kind, difficulty, fill, args, Path(tmp)))
    result["machine"]["load_average_after"] = list(os.getloadavg())
    result["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(json_safe(result), indent=2) + "\n")
    print(f"wrote {args.out} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
