"""fastall's default `train-head` against its linear-probe baseline, same cache and folds, one run (issue 11).

Three kinds of synthetic data, each easy (the demo's margin) and hard (margin 0.5, patient effects 2x):
  light   generic 2-class tree on a light background (extracted with --fill auto; ``--fills`` adds black);
  small   the C-NMC tree (no prelim), 5 patients per class of about 20 images (about 20 images per class per
          fold);
  4class  generic 4-class tree on a smear background;
  tiny    (not in the default run; a stress test) light background, 6 patients per class of 8 images.
Each: synth -> extract (random-init ResNet-50, `--weights none`) -> `train_head` with `--test none --folds 5`
for every variant. The ``default`` variant is exactly `fastall train-head` with no options (the default
preset); its metrics.json carries the probe (`baseline`), which is the number to beat: the bar is
head - probe >= -0.01 in mean CV accuracy. The other variants are the measurements behind the default (each
changes one thing) and the paper preset. Also: the feature shift between augmented views and view 0 (SMD).

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

from fastall.data.synth import GENERIC_PATIENT_REGEX, synthesize  # noqa: E402
from fastall.features.cache import read_cache  # noqa: E402
from fastall.features.extract import extract  # noqa: E402
from fastall.inference.bench import machine_info  # noqa: E402
from fastall.system.jsonable import plain  # noqa: E402
from fastall.training.config import TrainOptions  # noqa: E402
from fastall.training.presets import apply_preset  # noqa: E402
from fastall.training.train_head import train_head  # noqa: E402
from fastall.training.views import view_shift  # noqa: E402

BAR = -0.01
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "default": ("default", {}, {}),
    "paper": ("paper", {}, {}),
    "train_views=augmented": ("default", {}, {"train_views": "augmented"}),
    "head_init=random": ("default", {}, {"head_init": "random"}),
    "min_delta=0": ("default", {"min_delta": 0.0}, {}),
    "lr=1e-3": ("default", {"lr": 1e-3}, {}),
    "lr=1e-4": ("default", {"lr": 1e-4}, {}),
    "inner_folds=3": ("default", {}, {"inner_folds": 3}),
    "selection=fold (optimistic)": ("default", {}, {"selection": "fold"}),
}

KINDS = {
    "light": {"layout": "generic", "patients_per_class": 10, "images_per_patient": 10, "background": "light"},
    "small": {"layout": "cnmc", "patients_per_class": 5, "images_per_patient": 20, "background": "black"},
    "4class": {"layout": "generic", "classes": 4, "patients_per_class": 6, "images_per_patient": 10,
               "background": "smear"},
    "tiny": {"layout": "generic", "patients_per_class": 6, "images_per_patient": 8, "background": "light"},
}  # fmt: skip


def make_cache(
    kind: str, difficulty: str, fill: str, args: argparse.Namespace, work: Path
) -> tuple[Path, float]:
    """Synthesise and extract once (kept in ``work``): the cache and the extract seconds (0: reused)."""
    spec = dict(KINDS[kind])
    background = spec.pop("background")
    data = work / f"{kind}-{difficulty}"
    if not data.exists():
        synthesize(data, size=args.side, seed=args.seed, prelim=False, background=background,
                   difficulty=difficulty, **spec)  # fmt: skip
    cache = work / f"{kind}-{difficulty}-{fill}.h5"
    if cache.exists():
        return cache, 0.0
    regex = GENERIC_PATIENT_REGEX if spec["layout"] == "generic" else None
    t0 = time.perf_counter()
    extract(data, cache, views=args.views, image_size=args.size, weights="none", device="cpu", fill=fill,
            include=(), patient_regex=regex, seed=args.seed)  # fmt: skip
    return cache, time.perf_counter() - t0


def one(kind: str, difficulty: str, fill: str, args: argparse.Namespace, work: Path) -> dict:
    cache, extract_s = make_cache(kind, difficulty, fill, args, work)
    c = read_cache(cache)
    row: dict = {
        "kind": kind,
        "difficulty": difficulty,
        "fill": fill,
        "images": c.n_images,
        "patients": len(set(c.patients)),
        "classes": len(c.class_names),
        "feature_shift_smd": view_shift(c.features, np.arange(c.n_images), "augmented")["smd"],
        "extract_s": extract_s,
        "variants": {},
    }
    for name in args.variants.split(","):
        preset, config, protocol = VARIANTS[name]
        cfg, proto = apply_preset(preset, config, protocol)
        options = TrainOptions(folds=5, test="none", seed=args.seed, device="cpu", progress=False,
                               overwrite=True, report=False, probe=name == "default", **proto)  # fmt: skip
        run = train_head(cache, work / "run", cfg, options)
        row["variants"][name] = {
            "cv_accuracy": run.summary["accuracy"],
            "cv_auc": run.summary["auc"],
            "fold_accuracy": [f["accuracy"] for f in run.folds],
            "epochs_kept": [f["best_epoch"] for f in run.folds],
            "train_s": run.metrics["timings"]["train_s"],
        }
        if name == "default":
            probe = run.metrics["probe"]
            row["probe_cv_accuracy"] = probe["summary"]["accuracy"]
            row["probe_cv_auc"] = probe["summary"]["auc"]
            row["probe_c"] = [f["c"] for f in probe["folds"]]
            row["probe_s"] = run.metrics["timings"]["probe_s"]
            row["head_minus_probe"] = run.metrics["baseline"]["head_minus_probe_cv_accuracy"]
            row["meets_bar"] = row["head_minus_probe"] >= BAR
    for v in row["variants"].values():
        v["minus_probe"] = v["cv_accuracy"] - row["probe_cv_accuracy"]
    line = " ".join(
        f"{n.replace('default, ', '')}={v['minus_probe']:+.3f}" for n, v in row["variants"].items()
    )
    print(
        f"{kind:7s} {difficulty:5s} fill={fill:6s} probe {row['probe_cv_accuracy']:.3f} | {line}", flush=True
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=128, help="Synthetic image side.")
    parser.add_argument("--size", type=int, default=96, help="Backbone input size.")
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="light,small,4class", help=f"Of: {', '.join(KINDS)}.")
    parser.add_argument("--difficulties", default="easy,hard")
    parser.add_argument("--fills", default="auto", help="Fills for the light kind (auto,black).")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"Of: {', '.join(VARIANTS)}.")
    parser.add_argument("--work", type=Path, default=None, help="Keep synthetic data and caches here.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/head_vs_probe_cpu.json")
    args = parser.parse_args()
    result = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "machine": machine_info("cpu"),
        "runs": [],
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for difficulty in args.difficulties.split(","):
            for kind in args.kinds.split(","):
                fills = args.fills.split(",") if kind == "light" else ["auto"]
                for fill in fills:
                    result["runs"].append(one(kind, difficulty, fill, args, work))
    result["bar"] = {"head_minus_probe_at_least": BAR, "met": all(r["meets_bar"] for r in result["runs"])}
    result["machine"]["load_average_after"] = list(os.getloadavg())
    result["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(plain(result), indent=2) + "\n")
    print(f"wrote {args.out} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
