"""Synthetic blood smears (``synth --layout smear``): leukocytes among red cells, platelets and debris.

Each smear is a light bright-field field (640x480 by default, as the BCCD photographs) of one patient. It
holds 2-5 leukocytes drawn by :mod:`fastall.data.cells` (the patient's class morphology, stain and size;
sometimes two touching), 35-70 pink red cells with a pale centre (some overlapping each other and the
leukocytes' edges), 4-12 violet platelets (a third of a red cell across), and stain debris: small irregular
violet specks and faint streaks. The scale follows real smears (``/work/shared/data/bccd``): red cells about
a sixth of the field's height, leukocytes 1.5-2.2 red cells across, violet nuclei (haematoxylin-like
optical density) on a pale lilac cytoplasm.

Written: ``OUT/P<patient>_S<k>.png``, ``OUT/boxes.csv`` (``image,xmin,ymin,xmax,ymax``: every leukocyte's
box, x/y max exclusive) and ``OUT/patients.csv`` (``path,patient,class``, what ``screen --patients`` reads).
Byte-identical output for equal arguments.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fastall.data.cells import image_params, patient_look, render, slide_colour, typicality_ranges
from fastall.errors import FastallError
from fastall.system import csvsafe
from fastall.system.files import atomic_write_text

CLASSES = ("all", "hem")
RED_CELL = np.array([0.86, 0.58, 0.62], dtype=np.float32)
PLATELET = np.array([0.55, 0.35, 0.70], dtype=np.float32)
NUCLEUS = np.array([0.47, 0.33, 0.80], dtype=np.float32)  # the BCCD crops' violet nuclei
CYTOPLASM = np.array([0.76, 0.70, 0.86], dtype=np.float32)  # and their pale lilac cytoplasm


@dataclass
class SmearSummary:
    root: Path
    smears: int
    leukocytes: int
    patients: int
    size: tuple[int, int]


def synthesize_smears(
    out: str | Path,
    *,
    patients_per_class: int = 3,
    smears_per_patient: int = 2,
    width: int = 640,
    seed: int = 0,
    overwrite: bool = False,
) -> SmearSummary:
    """Write the smears, ``boxes.csv`` and ``patients.csv`` into ``out`` (module docstring)."""
    if not 64 <= width <= 4096:
        raise FastallError(f"smear width must be between 64 and 4096 pixels, got {width}")
    if patients_per_class < 1 or smears_per_patient < 1:
        raise FastallError("patients per class and smears per patient must be at least 1")
    root = Path(out)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FastallError(f"{root} already exists and is not empty; remove it or choose another folder")
    root.mkdir(parents=True, exist_ok=True)
    height = width * 3 // 4
    ranges = dict(zip(CLASSES, typicality_ranges(2, None), strict=True))
    boxes, patients, total = [], [], 0
    for k, cls in enumerate(CLASSES):
        for i in range(patients_per_class):
            patient = f"P{k * patients_per_class + i + 1:03d}"
            prng = np.random.default_rng([seed, zlib.crc32(patient.encode())])
            look = smear_look(prng, ranges[cls])
            for s in range(1, smears_per_patient + 1):
                name = f"{patient}_S{s:02d}.png"
                image, cells = draw_smear(prng, look, width, height)
                (root / name).write_bytes(_png(image))
                boxes += [[name, *box] for box in cells]
                patients.append([name, patient, cls])
                total += len(cells)
    _csv(root / "boxes.csv", ["image", "xmin", "ymin", "xmax", "ymax"], boxes)
    _csv(root / "patients.csv", ["path", "patient", "class"], patients)
    return SmearSummary(root, len(patients), total, 2 * patients_per_class, (width, height))


def smear_look(rng: np.random.Generator, typicality: tuple[float, float]) -> dict:
    """A patient's leukocytes: the class morphology and size of :func:`patient_look`, in a real smear's
    Romanowsky colours."""
    look = patient_look(rng, typicality)
    look["nucleus"] = NUCLEUS * np.exp(rng.normal(0, 0.06, 3))
    look["cytoplasm"] = CYTOPLASM * np.exp(rng.normal(0, 0.03, 3))
    return look


def draw_smear(
    rng: np.random.Generator, look: dict, width: int, height: int, leukocytes: tuple[int, int] = (2, 6)
) -> tuple[np.ndarray, list[list[int]]]:
    """One smear (uint8 [H, W, 3]) and its leukocyte boxes ``[x0, y0, x1, y1]``; ``leukocytes``: the range
    of their number (high end exclusive)."""
    slide = slide_colour(rng)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    tilt = 1 + rng.normal(0, 0.03) * (xx / width - 0.5) + rng.normal(0, 0.03) * (yy / height - 0.5)
    canvas = slide[None, None, :] * tilt[..., None]
    d = height * rng.uniform(0.14, 0.18)
    centres = _leukocyte_centres(rng, width, height, d, int(rng.integers(*leukocytes)))
    for _ in range(int(rng.integers(35, 71))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = d / 2 * rng.uniform(0.85, 1.15)
        _red_cell(canvas, xx, yy, x, y, r, rng)
    params = image_params(rng, look, len(centres))
    boxes = []
    for j, (x, y, across) in enumerate(centres):
        one = {key: v[j : j + 1] for key, v in params.items()}
        one["cx"] = one["cy"] = np.zeros(1)
        side = int(np.ceil(across / float(one["rc"][0]))) | 1
        boxes.append(_paste(canvas, render(one, side, rng)[0], x, y))
    for _ in range(int(rng.integers(4, 13))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        _blob(canvas, xx, yy, x, y, d * rng.uniform(0.1, 0.17), PLATELET)
    for _ in range(int(rng.integers(3, 9))):
        colour = PLATELET * rng.uniform(0.8, 1.1)
        r = d * rng.uniform(0.05, 0.12)
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        for _ in range(int(rng.integers(1, 4))):  # a speck of 1-3 overlapping blobs: irregular
            _blob(canvas, xx, yy, x + rng.normal(0, r), y + rng.normal(0, r), r, colour)
    _streak(canvas, xx, yy, rng, width, height)
    grain = rng.normal(0, 0.012, canvas.shape).astype(np.float32)
    image = np.clip((canvas + grain) * 255 + 0.5, 0, 255).astype(np.uint8)
    return image, [b for b in boxes if b[2] > b[0] and b[3] > b[1]]


def _leukocyte_centres(
    rng: np.random.Generator, width: int, height: int, d: float, wanted: int
) -> list[tuple]:
    """``wanted`` leukocytes (centre x, y and diameter), apart unless a pair is drawn touching."""
    out: list[tuple] = []
    for _ in range(200):
        if len(out) == wanted:
            break
        across = d * rng.uniform(1.5, 2.2)
        if out and rng.uniform() < 0.15:  # touching the previous one
            px, py, pa = out[-1]
            angle = rng.uniform(0, 2 * np.pi)
            gap = (pa + across) / 2 * 0.98
            x, y = px + gap * np.cos(angle), py + gap * np.sin(angle)
        else:
            x, y = rng.uniform(across / 3, width - across / 3), rng.uniform(across / 3, height - across / 3)
        apart = all(np.hypot(x - a, y - b) >= (c + across) / 2 * 0.95 for a, b, c in out)
        if apart and -across / 4 < x < width + across / 4 and -across / 4 < y < height + across / 4:
            out.append((x, y, across))
    return out


def _red_cell(canvas: np.ndarray, xx, yy, x: float, y: float, r: float, rng: np.random.Generator) -> None:
    box = _window(canvas, x, y, r + 2)
    if box is None:
        return
    sl = (slice(box[1], box[3]), slice(box[0], box[2]))
    dist = np.hypot(xx[sl] - x, yy[sl] - y) / r
    disc = np.clip((1 - dist) * r + 0.5, 0, 1)
    alpha = disc * rng.uniform(0.55, 0.8) * (1 - 0.5 * np.exp(-(dist**2) / 0.15))
    canvas[sl] = canvas[sl] * (1 - alpha[..., None]) + RED_CELL * alpha[..., None]


def _blob(canvas: np.ndarray, xx, yy, x: float, y: float, r: float, colour: np.ndarray) -> None:
    box = _window(canvas, x, y, r + 2)
    if box is None:
        return
    sl = (slice(box[1], box[3]), slice(box[0], box[2]))
    alpha = np.clip((1 - np.hypot(xx[sl] - x, yy[sl] - y) / r) * r + 0.5, 0, 1) * 0.9
    canvas[sl] = canvas[sl] * (1 - alpha[..., None]) + colour * alpha[..., None]


def _streak(canvas: np.ndarray, xx, yy, rng: np.random.Generator, width: int, height: int) -> None:
    """A faint stain streak across the field (precipitate along the smear direction)."""
    angle = rng.uniform(0, np.pi)
    offset = rng.uniform(-0.3, 0.3) * height
    dist = np.abs((xx - width / 2) * np.sin(angle) - (yy - height / 2) * np.cos(angle) - offset)
    alpha = 0.12 * np.exp(-((dist / 3.0) ** 2))
    canvas[:] = canvas * (1 - alpha[..., None]) + PLATELET * alpha[..., None]


def _paste(canvas: np.ndarray, cell: np.ndarray, x: float, y: float) -> list[int]:
    """Composite a cell rendered on black (its pixels premultiplied by coverage) centred at (x, y); return
    the box of its visible pixels."""
    side = cell.shape[0]
    x0, y0 = int(round(x)) - side // 2, int(round(y)) - side // 2
    h, w = canvas.shape[:2]
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
    if cx1 <= cx0 or cy1 <= cy0:
        return [0, 0, 0, 0]
    part = cell[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0].astype(np.float32) / 255
    bright = part.max(2, keepdims=True)
    inner = float(np.percentile(bright[bright > 0.2], 90)) if (bright > 0.2).any() else 1.0
    alpha = np.clip(bright / inner, 0, 1)
    canvas[cy0:cy1, cx0:cx1] = part + canvas[cy0:cy1, cx0:cx1] * (1 - alpha)
    rows, cols = np.nonzero(alpha[..., 0] > 0.5)
    if not rows.size:
        return [0, 0, 0, 0]
    x0, y0 = cx0 + int(cols.min()), cy0 + int(rows.min())
    return [x0, y0, cx0 + int(cols.max()) + 1, cy0 + int(rows.max()) + 1]


def _window(canvas: np.ndarray, x: float, y: float, r: float) -> tuple[int, int, int, int] | None:
    h, w = canvas.shape[:2]
    box = (max(0, int(x - r)), max(0, int(y - r)), min(w, int(x + r) + 1), min(h, int(y + r) + 1))
    return box if box[2] > box[0] and box[3] > box[1] else None


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    writer = csvsafe.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
