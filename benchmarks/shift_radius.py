"""How often fresh in-distribution features fall outside the Mahalanobis radius: in-sample vs out-of-sample.

The baseline is the radius fastall used before issue 28: the 99th percentile of the *fitted* rows' own
Ledoit-Wolf distances. The fix (:class:`fastall.inference.shift.Radius`) fits on half of the rows and takes
the percentile on the other half. Both are measured in the same run on the same Gaussian features, at the
sizes the issue reported (200 x 64 ... 10,000 x 2,048, the C-NMC size), on fresh samples of the same
distribution (the expected fraction is 1%), for two spectra: isotropic (where Ledoit-Wolf shrinks to the
truth and both hold) and decaying (variance 1/i, like backbone features, where the in-sample one fails).

    PYTHONPATH=$PWD python3 benchmarks/shift_radius.py --out benchmarks/results/shift_radius_cpu.json
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import numpy as np
from sklearn.covariance import LedoitWolf

sys.path.insert(0, os.path.dirname(__file__))
from common import write_result  # noqa: E402

from fastall.inference.shift import PERCENTILE, Radius  # noqa: E402

SIZES = ((200, 64), (1_000, 256), (2_000, 512), (10_000, 2_048))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/shift_radius_cpu.json")
    parser.add_argument("--fresh", type=int, default=5_000)
    args = parser.parse_args()
    rows = []
    for (n, dim), spectrum in itertools.product(SIZES, ("isotropic", "decaying 1/i")):
        rng = np.random.default_rng(n + dim)
        scale = np.ones(dim, np.float32) if spectrum == "isotropic" else 1 / np.sqrt(np.arange(1, dim + 1))
        train = rng.standard_normal((n, dim), dtype=np.float32) * scale.astype(np.float32)
        fresh = rng.standard_normal((args.fresh, dim), dtype=np.float32) * scale.astype(np.float32)
        start = time.perf_counter()
        lw = LedoitWolf().fit(train.astype(np.float64))
        radius = np.sqrt(np.percentile(lw.mahalanobis(train.astype(np.float64)), PERCENTILE))
        in_sample = float(np.mean(np.sqrt(lw.mahalanobis(fresh.astype(np.float64))) > radius))
        in_s = time.perf_counter() - start
        start = time.perf_counter()
        out_sample = float(Radius(train).outside(fresh).mean())
        out_s = time.perf_counter() - start
        rows.append(
            {
                "train_images": n,
                "dim": dim,
                "spectrum": spectrum,
                "fresh_images": args.fresh,
                "outside_in_sample_radius": in_sample,
                "outside_out_of_sample_radius": out_sample,
                "expected": 1 - PERCENTILE / 100,
                "seconds_in_sample": in_s,
                "seconds_out_of_sample": out_s,
            }
        )
        print(f"{n} x {dim} {spectrum}: in-sample {in_sample:.1%}, out of sample {out_sample:.1%}")
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    result = {"benchmark": "shift_radius", "rows": rows, "load_average": load, "date": time.strftime("%F")}
    print(write_result(args.out, result))


if __name__ == "__main__":
    main()
