"""`fastall cells`: every smear image's leukocytes, cropped into a generic tree that the other commands read.

Each leukocyte becomes a square crop centred on its box, ``margin`` times the box's longer side added on each
side (or, for ``screen``, sized so that the cell fills the share of the crop it fills in the run's training
images), padded with the slide colour where it leaves the image, optionally resized. Crops go to
``OUT/<smear-stem>/<smear-stem>_<k>.png`` (``k`` from 1, in reading order), a generic tree that ``scan``,
``extract``, ``predict`` and ``evaluate`` take as it is. A single-cell image (one centred cell, such as a
C-NMC or BCCD crop) is not a smear: it is written whole as its own crop and reported as such. A smear without
any leukocyte is kept with 0 cells and a note; an unreadable or over-budget image (the pixel budget of
:mod:`fastall.data.images`) and a stain the method cannot separate are noted and skipped.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import zlib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np
from PIL import Image

from fastall.data.detect import Detection, StainError, detect
from fastall.data.images import BadImageError, decode_image
from fastall.data.walk import find_images
from fastall.errors import FastallError
from fastall.system import csvsafe
from fastall.system.events import Reporter, silent
from fastall.system.faults import reached
from fastall.system.files import atomic_write_text

CELL_COLUMNS = ("smear", "cell", "x0", "y0", "x1", "y1", "area", "score")
SMEAR_COLUMNS = ("smear", "kind", "cells", "width", "height", "cell_scale", "note")
EMPTY_NOTE = "no leukocyte found"
PARALLEL_FROM = 64
SINGLE_NOTE = "a single-cell image, not a smear: kept whole"


@dataclass
class CropConfig:
    """How leukocytes are found and cropped. ``fill`` (0-1): the cell's share of the crop side, which
    overrides ``margin`` (``screen`` sets it from the run's training images); ``size``: crops resized to
    ``size`` x ``size`` (None: as cut). ``workers``: detection processes (None: two from
    :data:`PARALLEL_FROM` smears on, where the cost of starting them is repaid; detection is single-threaded,
    so a second process uses the second core)."""

    method: str = "stain"
    margin: float = 0.15
    fill: float | None = None
    size: int | None = None
    workers: int | None = None

    def check(self) -> None:
        if not 0 <= self.margin <= 2:
            raise FastallError(f"--margin {self.margin}: use a fraction of the cell between 0 and 2")
        if self.fill is not None and not 0.05 <= self.fill <= 1:
            raise FastallError(f"cell fill {self.fill}: must be between 0.05 and 1")

    def side(self, box: np.ndarray) -> int:
        longest = int(max(box[2] - box[0], box[3] - box[1]))
        if self.fill is not None:
            return max(1, round(longest / self.fill))
        return max(1, round(longest * (1 + 2 * self.margin)))


@dataclass
class Smear:
    """One input image: what was found in it and where its crops went (paths relative to OUT)."""

    path: Path
    name: str  # relative to the smears folder
    stem: str  # the folder of its crops
    kind: str  # "smear" | "single cell" | "unreadable" | "not separated"
    found: Detection | None = None
    crops: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def cells(self) -> int:
        return len(self.crops)


def find_smears(inputs: list[str | Path], reporter: Reporter) -> list[tuple[Path, str]]:
    """``(path, name)`` of every image under ``inputs`` (names relative to a folder given)."""
    paths, problems = find_images(inputs)
    for path, reason in problems:
        reporter.warn("smear-missing", f"{path}: {reason}")
    if not paths:
        raise FastallError(f"no image files found in {', '.join(map(str, inputs))}")
    roots = [Path(p) for p in inputs if Path(p).is_dir()]
    out = []
    for path in paths:
        root = next((r for r in roots if path.is_relative_to(r)), None)
        out.append((path, path.relative_to(root).as_posix() if root else path.name))
    return out


def stems(names: list[str]) -> list[str]:
    """A folder name per smear: its file stem, made safe; a stem two smears share gets a short hash."""
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", Path(n).stem).strip("._") or "smear" for n in names]
    seen: dict[str, int] = {}
    for s in safe:
        seen[s] = seen.get(s, 0) + 1
    return [
        s if seen[s] == 1 else f"{s}-{zlib.crc32(n.encode()):08x}" for s, n in zip(safe, names, strict=True)
    ]


def crop_cells(
    inputs: list[str | Path], out: Path, config: CropConfig, reporter: Reporter | None = None
) -> list[Smear]:
    """Detect and crop every smear of ``inputs`` into ``out`` (an existing folder); writes the crops only
    (:func:`write_tables` writes ``cells.csv`` and ``smears.csv``)."""
    reporter = reporter or silent()
    config.check()
    found = find_smears(inputs, reporter)
    names = stems([name for _, name in found])
    jobs = [(path, name, stem) for (path, name), stem in zip(found, names, strict=True)]
    workers = config.workers
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if len(jobs) >= PARALLEL_FROM else 0
    with reporter.task("detect", len(jobs)) as advance:
        smears = _in_workers(jobs, out, config, workers, reporter, advance) if workers > 1 else None
        if smears is None:
            smears = []
            for job in jobs:
                smears.append(one_smear(*job, out, config, reporter))
                advance(1)
    reached("cells-crops")
    return smears


def _in_workers(
    jobs: list, out: Path, config: CropConfig, workers: int, reporter: Reporter, advance
) -> list | None:
    """The smears detected by ``workers`` spawned processes (never a fork of a process holding torch
    threads); None when the pool cannot run (a script without a ``__main__`` guard): then in this process."""
    smears: list[Smear] = []
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for smear, warnings in pool.map(_collected, jobs, repeat(out), repeat(config), chunksize=4):
                for w in warnings:
                    reporter.warn(w["code"], w["text"])
                smears.append(smear)
                advance(1)
    except BrokenProcessPool:
        advance(-len(smears))
        return None
    return smears


def _collected(job: tuple[Path, str, str], out: Path, config: CropConfig) -> tuple[Smear, list[dict]]:
    """:func:`one_smear` in a worker process: its warnings come back as records."""
    reporter = silent()
    return one_smear(*job, out, config, reporter), reporter.warnings


def one_smear(path: Path, name: str, stem: str, out: Path, config: CropConfig, reporter: Reporter) -> Smear:
    try:
        pixels = decode_image(path).permute(1, 2, 0).numpy()
    except BadImageError as err:
        reporter.warn("smear-unreadable", str(err))
        return Smear(path, name, stem, "unreadable", note=str(err).split(": ", 1)[-1])
    try:
        found = detect(pixels, config.method)
    except StainError as err:
        reporter.warn("stain", f"{name}: {err}")
        return Smear(path, name, stem, "not separated", note=str(err))
    smear = Smear(path, name, stem, found.kind, found)
    folder = out / stem
    if found.kind == "single cell":
        smear.note = SINGLE_NOTE
        crops = [pixels]
    else:
        crops = [cut(pixels, box, config, found.background) for box in found.boxes]
        if not crops:
            smear.note = EMPTY_NOTE
            reporter.warn("empty-smear", f"{name}: {EMPTY_NOTE}")
    if crops:
        folder.mkdir(parents=True, exist_ok=True)
    for k, crop in enumerate(crops, start=1):
        rel = f"{stem}/{stem}_{k}.png"
        (out / rel).write_bytes(png_bytes(crop))
        smear.crops.append(rel)
    return smear


def cut(pixels: np.ndarray, box: np.ndarray, config: CropConfig, fill: tuple[int, int, int]) -> np.ndarray:
    """The square crop of ``box`` (module docstring), padded with ``fill`` outside the image."""
    side = config.side(box)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    h, w = pixels.shape[:2]
    crop = np.empty((side, side, 3), dtype=np.uint8)
    crop[:] = np.asarray(fill, dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
    if sx1 > sx0 and sy1 > sy0:
        crop[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = pixels[sy0:sy1, sx0:sx1]
    if config.size is not None and config.size != side:
        crop = np.asarray(Image.fromarray(crop).resize((config.size, config.size), Image.Resampling.BILINEAR))
    return crop


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def cell_rows(smears: list[Smear]) -> list[list]:
    """cells.csv's rows: the smear, the crop (relative to OUT) and its box in the source image."""
    rows = []
    for s in smears:
        f = s.found
        for k, rel in enumerate(s.crops):
            if s.kind == "single cell" and (f is None or not len(f)):
                box, area, score = [0, 0, f.width if f else 0, f.height if f else 0], 0.0, 1.0
            else:
                box, area, score = f.boxes[k].tolist(), float(f.areas[k]), float(f.scores[k])
            rows.append([s.name, rel, *box, f"{area:.0f}", f"{score:.3f}"])
    return rows


def smear_rows(smears: list[Smear]) -> list[list]:
    rows = []
    for s in smears:
        f = s.found
        scale = f"{f.cell_scale:.1f}" if f is not None and np.isfinite(f.cell_scale) else ""
        rows.append([s.name, s.kind, s.cells, f.width if f else "", f.height if f else "", scale, s.note])
    return rows


def write_csv(path: Path, header: tuple[str, ...] | list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    writer = csvsafe.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_tables(smears: list[Smear], out: Path) -> None:
    write_csv(out / "cells.csv", CELL_COLUMNS, cell_rows(smears))
    write_csv(out / "smears.csv", SMEAR_COLUMNS, smear_rows(smears))
