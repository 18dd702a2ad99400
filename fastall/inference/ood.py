"""The out-of-distribution flag of `predict` and `evaluate`: is an image's view-0 backbone feature outside the
run's training-feature radius (:class:`fastall.inference.shift.Radius`, calibrated out of sample so that
about 1% of images like the training ones are flagged)?

It catches inputs whose *features* lie far from every training cell: a smear field, a blank tile, another
stain or scanner. It does not catch an input that looks like a training cell to the backbone (a cell of
another disease, a mislabelled or slightly shifted cell), and about 1% of ordinary cells are flagged by
construction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastall.features.cache import read_cache
from fastall.features.cut import STAGE_FEATURES
from fastall.inference.artifacts import check_run_cache, open_run
from fastall.inference.shift import Radius


def training_radius(run: str | Path) -> tuple[Radius | None, str]:
    """``(radius, "")`` from RUN's training cache, or ``(None, why not)`` where it cannot be had."""
    if not Path(run).is_dir():
        return None, "an exported model carries no training features: ood not measured (give the run folder)"
    folder = open_run(run)
    if folder.cache_path is None or not folder.cache_path.is_file():
        return None, f"the run's training cache {folder.cache_path} is not here: ood not measured"
    fc = check_run_cache(folder.record, read_cache(folder.cache_path), folder.head_path)
    if fc.n_images < 4:
        return None, f"{fc.n_images} training images: too few to calibrate the ood radius"
    view0 = training_view0(folder.record, folder.run, fc.features)
    if view0 is None:
        return None, f"{folder.run}/{STAGE_FEATURES} is not here: ood not measured"
    return Radius(view0, fc.patients), ""


def training_view0(record: dict, run: str | Path, features: np.ndarray) -> np.ndarray | None:
    """float32 ``[N, D]``: the run's view-0 training features, the cache's; for a finetune run, those of
    its fine-tuned stage (``RUN/stage_features.npy``, None where missing)."""
    if not record.get("finetune"):
        return features[:, 0, :].astype(np.float32)
    path = Path(run) / STAGE_FEATURES
    return np.load(path).astype(np.float32) if path.is_file() else None


def ood_line(flags: np.ndarray) -> str:
    """One summary line: how many images fall outside the radius."""
    n = int(np.sum(flags))
    return (
        f"ood: {n} of {len(flags)} image(s) ({100 * n / max(1, len(flags)):.1f}%) outside the run's "
        "training-feature radius (about 1% expected for images like the training ones)"
    )
