"""Image decode rates on the CPU: the BMP fast path (numpy from the file's bytes) against Pillow, one run.

Synthetic C-NMC cells (450x450 24-bit BMP, fastall.data.synth) are decoded to uint8 RGB [3, H, W] by
(a) `fastall.data.images.decode_image` (fast path), (b) Pillow (``Image.open`` + ``convert("RGB")`` + the same
tensor copy), each alone and followed by the 224-px resize of `extract`. Rates are images/s in one process,
one thread; ratio fast/Pillow. Every decoded image is checked to be identical on both paths.

    PYTHONPATH=$PWD python3 benchmarks/decode.py --out benchmarks/results/decode_cpu.json
"""

from __future__ import annotations  # noqa: I001 - fastall first: its OpenMP wait policy must precede torch

import fastall  # noqa: F401
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import write_result
from fastall.data.images import decode_image
from fastall.data.synth import synthesize
from fastall.data.walk import find_images
from fastall.preprocess import resize_uint8


def pillow_decode(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy())


def rate(fn, paths: list[Path], rounds: int, resize: int | None) -> dict:
    """Best of ``rounds`` passes over ``paths`` (images/s); the page cache is warm after the first."""
    best = 0.0
    for _ in range(rounds + 1):
        start = time.perf_counter()
        for p in paths:
            x = fn(p)
            if resize:
                resize_uint8(x[None].contiguous(memory_format=torch.channels_last), resize)
        best = max(best, len(paths) / (time.perf_counter() - start))
    return {"images_per_s": best, "ms_per_image": 1e3 / best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=450)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--resize", type=int, default=224)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="fastall-decode-") as tmp:
        per = max(2, args.images // 8)
        synthesize(tmp, patients_per_class=4, images_per_patient=per, size=args.size, prelim=False)
        paths = find_images([tmp])[0][: args.images]
        same = all(torch.equal(decode_image(p), pillow_decode(p)) for p in paths)
        results = {}
        for name, fn in (("fast_path", decode_image), ("pillow", pillow_decode)):
            results[name] = {
                "decode": rate(fn, paths, args.rounds, None),
                f"decode_resize_{args.resize}": rate(fn, paths, args.rounds, args.resize),
            }
    ratios = {
        key: results["fast_path"][key]["images_per_s"] / results["pillow"][key]["images_per_s"]
        for key in results["pillow"]
    }
    out = {
        "benchmark": "decode",
        "settings": {**vars(args), "images": len(paths), "threads": 1},
        "identical_pixels": same,
        "results": results,
        "fast_vs_pillow": ratios,
    }
    write_result(args.out, out)
    print(json.dumps({"identical_pixels": same, "fast_vs_pillow": ratios, "results": results}, indent=2))


if __name__ == "__main__":
    main()
