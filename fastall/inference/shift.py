"""How far an external dataset is from the run's training data: feature shift, Mahalanobis outliers, copies.

Shift compares view-0 backbone features. ``mean_shift`` is the mean over features of |mean_DATA - mean_train|
in training standard deviations (a standardised mean difference); ``std_ratio`` is the median over features of
std_DATA / std_train. The Mahalanobis radius is calibrated out of sample (:class:`Radius`): a Ledoit-Wolf
covariance is fitted on one half of the training images (split by patient where patients are known) and the
radius is the 99th percentile of the *other* half's distances, so about 1% of fresh in-distribution images
fall outside it. (The percentile of the fitted rows' own distances is far too small for features with a
decaying spectrum, as backbone features have: at 10,000 x 2,048, 100% of fresh same-distribution samples fell
outside it; benchmarks/results/shift_radius_cpu.json.)

Warning rule (``large``): more than 10% of DATA outside the radius (ten times the expected 1%), or a mean
shift above 0.5 training standard deviations, or a median std ratio outside [0.5, 2].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xxhash
from sklearn.covariance import LedoitWolf

from fastall.errors import FastallError

OUTSIDE_LIMIT, MEAN_LIMIT, STD_LIMITS = 0.10, 0.5, (0.5, 2.0)
PERCENTILE = 99.0


class Radius:
    """The training features' Mahalanobis radius, calibrated out of sample (see the module doc).

    ``groups`` (patients) keep one patient's images on one side of the split; ``None`` splits images."""

    def __init__(self, train: np.ndarray, groups: np.ndarray | None = None, seed: int = 0) -> None:
        train = np.asarray(train, dtype=np.float64)
        if len(train) < 4:
            raise FastallError(f"{len(train)} training images: too few to calibrate a Mahalanobis radius")
        rng = np.random.default_rng(seed)
        if groups is not None and len(np.unique(groups)) >= 4:
            codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].reshape(-1)
            count = int(codes.max()) + 1
            fit = (rng.permutation(count) < count // 2)[codes]
        else:
            fit = np.zeros(len(train), bool)
            fit[rng.permutation(len(train))[: len(train) // 2]] = True
        self.model = LedoitWolf().fit(train[fit])
        self.value = float(np.sqrt(np.percentile(self.model.mahalanobis(train[~fit]), PERCENTILE)))
        self.fit_images, self.calibration_images = int(fit.sum()), int((~fit).sum())

    def distance(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(self.model.mahalanobis(np.asarray(x, dtype=np.float64)))

    def outside(self, x: np.ndarray) -> np.ndarray:
        """bool ``[N]``: which rows of ``x`` fall outside the radius."""
        return self.distance(x) > self.value


def domain_shift(
    train: np.ndarray, data: np.ndarray, groups: np.ndarray | None = None, radius: Radius | None = None
) -> dict:
    """The shift summary of ``data [N, D]`` against ``train [M, D]`` features (see the module doc);
    ``radius``: one already calibrated on ``train``."""
    train, data = np.asarray(train, dtype=np.float64), np.asarray(data, dtype=np.float64)
    mu, sd = train.mean(0), train.std(0)
    live = sd > 1e-8
    mean_shift = float(np.mean(np.abs(data.mean(0) - mu)[live] / sd[live])) if live.any() else 0.0
    std_ratio = float(np.median(data.std(0)[live] / sd[live])) if live.any() and len(data) > 1 else 1.0
    calibrated = radius if radius is not None else Radius(train, groups)
    radius = calibrated.value
    distance = calibrated.distance(data)
    outside = float(np.mean(distance > radius))
    reasons = []
    if outside > OUTSIDE_LIMIT:
        reasons.append(f"{100 * outside:.0f}% of DATA outside the training 99th-percentile radius")
    if mean_shift > MEAN_LIMIT:
        reasons.append(f"mean feature shift {mean_shift:.2f} training SDs")
    if not STD_LIMITS[0] <= std_ratio <= STD_LIMITS[1]:
        reasons.append(f"feature spread {std_ratio:.2f}x the training spread")
    return {
        "features": "view 0, backbone output",
        "train_images": int(train.shape[0]),
        "data_images": int(data.shape[0]),
        "mean_shift": mean_shift,
        "std_ratio": std_ratio,
        "mahalanobis_radius_p99": radius,
        "radius_calibration": (
            f"Ledoit-Wolf fitted on {calibrated.fit_images} training images, 99th percentile of the other "
            f"{calibrated.calibration_images} (out of sample)"
        ),
        "median_distance": float(np.median(distance)),
        "fraction_outside": outside,
        "expected_outside": 1.0 - PERCENTILE / 100.0,
        "rule": (
            f"large if > {OUTSIDE_LIMIT:.0%} outside the radius, or mean shift > {MEAN_LIMIT} SD, "
            f"or std ratio outside [{STD_LIMITS[0]}, {STD_LIMITS[1]}]"
        ),
        "large": bool(reasons),
        "reasons": reasons,
    }


def shift_line(s: dict) -> str:
    return (
        f"mean feature shift {s['mean_shift']:.2f} SD, std ratio {s['std_ratio']:.2f}, "
        f"{100 * s['fraction_outside']:.1f}% of DATA outside the training 99th-percentile Mahalanobis radius "
        f"(expected ~{100 * s['expected_outside']:.0f}%)"
    )


def file_hash(path: Path) -> str | None:
    try:
        return xxhash.xxh3_128_hexdigest(Path(path).read_bytes())
    except OSError:
        return None


def same_files(data_paths: Sequence[Path], train_root: str | Path | None, train_rel: Sequence[str]) -> dict:
    """How many DATA files have the same bytes as a training file (xxh3-128 of the contents).

    Only training files whose size equals some DATA file's size are read.
    """
    if not train_root or not Path(str(train_root)).is_dir():
        return {
            "checked": False,
            "note": f"training images not found at the cache's data root ({train_root}): copies not checked",
        }
    sizes: dict[int, list[Path]] = {}
    for p in data_paths:
        try:
            sizes.setdefault(Path(p).stat().st_size, []).append(Path(p))
        except OSError:
            continue
    train_hashes = set()
    for rel in train_rel:
        path = Path(str(train_root)) / str(rel)
        try:
            if path.stat().st_size in sizes:
                train_hashes.add(file_hash(path))
        except OSError:
            continue
    train_hashes.discard(None)
    copies = [str(p) for group in sizes.values() for p in group if file_hash(p) in train_hashes]
    return {"checked": True, "root": str(train_root), "copies": len(copies), "examples": copies[:5]}
