"""The cell scale of a run's training images, so that smear crops show cells as the classifier saw them.

A classifier trained on 450 px crops of one centred cell learned cells that fill a certain share of the
image at a certain pixel size. Measured here on up to :data:`SAMPLE` of the run's training images (spread
over the cache's rows), with the same detector as the smears (a black-background C-NMC cell is its one
bright object): ``fill``, the median share of the image side the cell's box spans; ``image_px``, the median
image side; and the 5th-95th percentile of cell box sides in pixels. Screening then cuts each leukocyte's crop
so that the cell fills ``fill`` of it and resizes the crop to ``image_px`` (or the model's input side, if
smaller). The measurement is recorded in
``RUN/cell_scale.json`` (read back when it matches the run's cache) and in ``screen.json``.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np

from fastall.data.detect import StainError, detect
from fastall.data.images import BadImageError, decode_image
from fastall.errors import FastallError
from fastall.inference.artifacts import RunFolder
from fastall.system.files import atomic_write_text

SAMPLE = 16
FILE = "cell_scale.json"
FAR = 2.0  # a smear's cells this many times smaller or larger than the training range: warned


def training_scale(folder: RunFolder) -> dict:
    """``{"fill", "image_px", "cell_px": [p5, p50, p95], "images", "source"}``; ``fill`` None when the run's
    images are not here (crops then keep ``--margin``)."""
    cached = _read(folder)
    if cached is not None:
        return cached
    try:
        fc = folder.cache("measuring the training cell size")
        root = folder.data_root()
    except FastallError as err:
        return {"fill": None, "source": f"not measured: {err}"}
    rows = np.unique(np.linspace(0, len(fc.paths) - 1, min(SAMPLE, len(fc.paths))).round().astype(int))
    sides, fills, images = [], [], []
    for i in rows:
        try:
            pixels = decode_image(root / fc.paths[i]).permute(1, 2, 0).numpy()
            found = detect(pixels)
        except (BadImageError, StainError):
            continue
        if not len(found):
            continue
        box = found.boxes[np.argmax(found.areas)]
        side = float(max(box[2] - box[0], box[3] - box[1]))
        sides.append(side)
        fills.append(side / max(found.width, found.height))
        images.append(max(found.width, found.height))
    if not sides:
        return {"fill": None, "source": "not measured: no cell found in the sampled training images"}
    record = {
        "fill": round(float(np.median(fills)), 4),
        "image_px": int(np.median(images)),
        "cell_px": [round(float(v), 1) for v in np.percentile(sides, [5, 50, 95])],
        "images": len(sides),
        "source": f"measured on {len(sides)} of the run's training images",
        "cache": str(folder.cache_path),
    }
    with contextlib.suppress(OSError, FastallError):  # a read-only run: measured again next time
        atomic_write_text(folder.run / FILE, json.dumps(record, indent=2))
    return record


def _read(folder: RunFolder) -> dict | None:
    try:
        record = json.loads((folder.run / FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("cache") != str(folder.cache_path) or "fill" not in record:
        return None
    return record


def far_from_training(cell_sides: list[float], scale: dict) -> bool:
    """True when the median cell of a smear is :data:`FAR` times outside the training cells' 5-95 % range."""
    if not cell_sides or not scale.get("cell_px"):
        return False
    low, _, high = scale["cell_px"]
    typical = float(np.median(cell_sides))
    return typical < low / FAR or typical > high * FAR
