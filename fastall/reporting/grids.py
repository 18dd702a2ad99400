"""Example-cell grids (the paper's Figs. 3 and 4 and its error analysis) from the original images.

The images are found at the data root the cache recorded, or at ``--data DIR``. Images that are not there
leave the grids out with a note; ``--data`` pointing at other images is refused: every recorded path must be
there, and where discovery reproduces the run's records, the cache's dataset fingerprint must match.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fastall.data.discover import discover
from fastall.data.fingerprint import dataset_fingerprint
from fastall.data.images import decode_image
from fastall.errors import FastallError
from fastall.reporting.saved_runs import SavedPredictions

PER_ROW = 8
TILE = 128
_INCLUDES = (("prelim",), ("prelim", "testing"), ())


def image_root(p: SavedPredictions, metrics: dict | None, data: str | Path | None) -> tuple[Path | None, str]:
    """The folder holding the run's images, or ``(None, note)`` saying why the grids are left out.

    Raises FastallError when ``data`` (given by the user) is not there or holds other images.
    """
    cache = (metrics or {}).get("cache") or {}
    if data is None:
        recorded = cache.get("data_root")
        if not recorded:
            return (
                None,
                "example-cell grids left out: the run does not record where its images are (--data DIR)",
            )
        root = Path(recorded)
        if not root.is_dir():
            return None, f"example-cell grids left out: the images are not at {root} (moved? pass --data DIR)"
    else:
        root = Path(data)
        if not root.is_dir():
            raise FastallError(f"--data {root}: no such folder")
    problem = _other_images(root, p, cache.get("key_params") or {})
    if problem is None:
        return root, ""
    if data is not None:
        raise FastallError(f"--data {root}: {problem}; pass the folder the run's cache was extracted from")
    return None, f"example-cell grids left out: {root}: {problem}"


def _other_images(root: Path, p: SavedPredictions, key_params: dict) -> str | None:
    """Why ``root`` does not hold this run's images, or None when it does (as far as can be checked)."""
    missing = [rel for rel in p.path if not (root / str(rel)).is_file()]
    if missing:
        return f"{len(missing)} of {len(p.path)} of the run's images are not there (first: {missing[0]})"
    expected = key_params.get("dataset_fingerprint")
    if not expected:
        return None
    count = key_params.get("dataset_images")
    ours = {(str(a), str(b), str(c)) for a, b, c in zip(p.path, p.patient, p.label, strict=True)}
    for include in _INCLUDES:
        try:
            records = discover(root, include=include).records
        except FastallError:
            return None
        if count is not None and len(records) != count:
            continue
        if not ours <= {(r.rel_path, r.patient, str(r.class_name)) for r in records}:
            return None  # discovered with other settings (e.g. --patient-regex): the paths are the check
        if dataset_fingerprint(records) != expected:
            return "these are not the images the cache was made from (dataset fingerprint differs)"
        return None
    return f"these are not the images the cache was made from (it had {count} images)"


CAPTION_CHARS = 16


def _confidence(p: SavedPredictions, rows: np.ndarray) -> np.ndarray:
    """Probability of the predicted class."""
    prob = p.probability[rows]
    if not p.binary:
        return prob
    return np.where(p.prediction[rows] == p.score_class, prob, 1 - prob)


def shorten(text: str, limit: int = CAPTION_CHARS) -> str:
    """``text`` cut in the middle to ``limit`` characters (``abcd…wxyz``), whole when it fits."""
    text = str(text)
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head) :]


def grid_legend(p: SavedPredictions, groups: list[tuple[str, np.ndarray]]) -> list[str]:
    """The full name behind every tile's short caption: ``row r, #j: path (patient P)``."""
    out = []
    for name, rows in ((n, r) for n, r in groups if r.size):
        for j, i in enumerate(rows[:PER_ROW]):
            out.append(f"{name}, #{j + 1}: {p.path[i]} (patient {p.patient[i]})")
    return out


def _top(p: SavedPredictions, mask: np.ndarray, n: int = PER_ROW) -> np.ndarray:
    rows = np.flatnonzero(mask)
    order = np.lexsort((p.path[rows].astype(str), -_confidence(p, rows)))
    return rows[order[:n]]


def correct_rows(p: SavedPredictions) -> list[tuple[str, np.ndarray]]:
    """The most confident correct cells of each class (Figs. 3 and 4)."""
    right = p.label == p.prediction
    return [(f"{c}: most confident correct", _top(p, right & (p.label == c))) for c in p.class_names]


def error_rows(p: SavedPredictions) -> list[tuple[str, np.ndarray]]:
    """The most confident false positives and false negatives of the positive class (binary with a positive
    class), else the most confident errors of each true class."""
    wrong = p.label != p.prediction
    if not p.binary or p.positive is None:
        return [(f"true {c}, called otherwise", _top(p, wrong & (p.label == c))) for c in p.class_names]
    pos, neg = p.positive, p.negative
    return [
        (f"false positives (true {neg}, called {pos})", _top(p, wrong & (p.label == neg))),
        (f"false negatives (true {pos}, called {neg})", _top(p, wrong & (p.label == pos))),
    ]


def grid_figure(
    p: SavedPredictions, root: Path, groups: list[tuple[str, np.ndarray]], title: str
) -> Figure | None:
    """Rows of image tiles, each labelled with the probability of its predicted class and its patient: one
    mosaic in one axes (a figure of 16 small axes would take seconds to draw)."""
    groups = [(name, rows) for name, rows in groups if rows.size]
    if not groups:
        return None
    gap, label_h = 6, 34
    cell_h = TILE + label_h
    mosaic = np.full((len(groups) * cell_h, PER_ROW * (TILE + gap), 3), 255, np.uint8)
    fig = Figure(figsize=(1.45 * PER_ROW + 1.8, 1.95 * len(groups) + 0.4))
    ax = fig.add_axes((0.17, 0.02, 0.82, 0.9))
    for g, (name, rows) in enumerate(groups):
        conf = _confidence(p, rows)
        top = g * cell_h + label_h
        for j, i in enumerate(rows[:PER_ROW]):
            tile = _tile(root / str(p.path[i]))
            left = j * (TILE + gap) + (TILE - tile.shape[1]) // 2
            mosaic[top : top + tile.shape[0], left : left + tile.shape[1]] = tile[..., :3]
            split = "test" if p.split[i] == "test" else f"fold {p.fold[i]}"
            caption = f"#{j + 1} p={conf[j]:.2f} · {split}\npt {shorten(p.patient[i])}"
            ax.text(j * (TILE + gap) + TILE / 2, top - 3, caption, ha="center", va="bottom", fontsize=6.5)
        label = "\n".join(textwrap.fill(part, 24) for part in name.replace(" (", "\n(").split("\n"))
        ax.text(-8, top + TILE / 2, label, ha="right", va="center", fontsize=7.5)
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return fig


def _tile(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        image = decode_image(path).permute(1, 2, 0).numpy()
    except FastallError:
        return np.full((TILE, TILE, 3), 200, np.uint8)
    pil = Image.fromarray(image)
    pil.thumbnail((TILE, TILE))
    return np.asarray(pil)
