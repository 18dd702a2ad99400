"""Which fill keeps augmented views closest to view 0 on a light background? The choice behind `--fill auto`.

Synthetic light-background (and smear) cells, a random-init ResNet-50 (`--weights none`), the shared
`preprocess` and extract's autocast. Every candidate fill gets the same augmentation draws; only the colour of
the corners that rotation and zoom uncover differs. The figure is the standardised mean difference (SMD)
between the augmented views' features and view 0's, per feature dimension, ``|mean_aug - mean_0| /
sqrt((var_aug + var_0) / 2)``, summarised as the mean over dimensions (lower is closer), and each fill's
ratio against black (the paper's fill, the baseline of the same run). Also the global feature mean/std of
view 0 and of the augmented views, as in issue 11's table.

    PYTHONPATH=$PWD python3 benchmarks/fill_choice.py --out benchmarks/results/fill_choice_cpu.json
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
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastall.data.images import decode_image  # noqa: E402
from fastall.data.synth import synthesize  # noqa: E402
from fastall.features.augment import AUTO_LIGHT, draw_view_params, resolve_fill  # noqa: E402
from fastall.features.backbone import load_backbone  # noqa: E402
from fastall.inference.bench import machine_info  # noqa: E402
from fastall.preprocess import preprocess, resize_uint8  # noqa: E402

CANDIDATES = ("black", "edge", "reflect", "median")


def cpu_flags() -> list[str]:
    wanted = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return sorted(wanted & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def features(
    model: torch.nn.Module, images: torch.Tensor, size: int, params: torch.Tensor | None
) -> np.ndarray:
    out = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for lo in range(0, images.shape[0], 32):
            p = None if params is None else params[lo : lo + 32]
            x = preprocess(images[lo : lo + 32], size, view_params=p)
            out.append(model(x.contiguous(memory_format=torch.channels_last)).float().numpy())
    return np.concatenate(out)


def smd(aug: np.ndarray, base: np.ndarray) -> dict[str, float]:
    pooled = np.sqrt((aug.var(0) + base.var(0)) / 2)
    live = pooled > 1e-6
    d = np.abs(aug.mean(0) - base.mean(0))[live] / pooled[live]
    return {"mean": float(d.mean()), "median": float(np.median(d)), "p95": float(np.quantile(d, 0.95))}


def measure(background: str, args: argparse.Namespace, model: torch.nn.Module, tmp: Path) -> dict:
    summary = synthesize(
        tmp / background,
        layout="generic",
        patients_per_class=args.patients,
        images_per_patient=args.images,
        size=args.side,
        seed=args.seed,
        background=background,
    )
    paths = sorted(summary.root.rglob("*.bmp"))
    images = torch.stack([resize_uint8(decode_image(p)[None], args.size)[0] for p in paths])
    t0 = time.perf_counter()
    view0 = features(model, images, args.size, None)
    out: dict = {
        "images": len(paths),
        "view0_mean": float(view0.mean()),
        "view0_std": float(view0.std()),
        "fills": {},
    }
    for fill in CANDIDATES:
        params = draw_view_params(args.seed, range(len(paths)), args.views, resolve_fill(images, fill))
        aug = np.concatenate(
            [features(model, images, args.size, torch.from_numpy(params[:, v])) for v in range(1, args.views)]
        )
        out["fills"][fill] = {
            "smd": smd(aug, view0),
            "aug_mean": float(aug.mean()),
            "aug_std": float(aug.std()),
        }
    black = out["fills"]["black"]["smd"]["mean"]
    for row in out["fills"].values():
        row["smd_ratio_vs_black"] = row["smd"]["mean"] / black
    light = {k: v["smd"]["mean"] for k, v in out["fills"].items() if k != "black"}
    out["closest"] = min(light, key=light.get)
    out["seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=10, help="Patients per class (2 classes).")
    parser.add_argument("--images", type=int, default=8, help="Images per patient (on average).")
    parser.add_argument("--side", type=int, default=128, help="Synthetic image side.")
    parser.add_argument("--size", type=int, default=96, help="Backbone input size.")
    parser.add_argument("--views", type=int, default=4, help="View 0 + views-1 augmented views.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/fill_choice_cpu.json")
    args = parser.parse_args()
    load_before = list(os.getloadavg())
    model, _ = load_backbone("none", seed=args.seed)
    model.eval()
    results = {"settings": vars(args) | {"out": str(args.out)}, "machine": machine_info("cpu")}
    results["machine"]["cpu_flags"] = cpu_flags()
    results["machine"]["load_average_before"] = load_before
    with tempfile.TemporaryDirectory() as tmp:
        for background in ("light", "smear"):
            results[background] = measure(background, args, model, Path(tmp))
            row = results[background]
            print(
                f"{background}: "
                + ", ".join(f"{k} {v['smd']['mean']:.3f}" for k, v in row["fills"].items())
                + f" -> closest {row['closest']}",
                flush=True,
            )
    results["machine"]["load_average_after"] = list(os.getloadavg())
    results["chosen_for_auto"] = results["light"]["closest"]
    results["auto_light_in_code"] = AUTO_LIGHT
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"closest on light: {results['chosen_for_auto']}; fastall's auto uses: {AUTO_LIGHT}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
