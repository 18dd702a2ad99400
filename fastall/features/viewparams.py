"""The column layout of ``view_params`` (a row per image and view), shared by the augmentation and the cache.

Columns 0-10 are the paper's augmentation; the fill columns came later (``fill``: 0 a constant colour given by
``fill_r/g/b`` in [0, 1], black when all are 0; 1 edge padding; 2 reflect padding) with ``keep_black`` (1: the
contrast jitter leaves pixels that are black in every channel black). A cache written before them reads as
black fill and the paper's contrast: :func:`upgrade_view_params` fills absent columns with ``LEGACY``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VIEW_PARAM_NAMES: tuple[str, ...] = (
    "hflip",
    "vflip",
    "angle",
    "scale",
    "brightness",
    "contrast",
    "erase",
    "erase_top",
    "erase_left",
    "erase_height",
    "erase_width",
    "fill",
    "fill_r",
    "fill_g",
    "fill_b",
    "keep_black",
)
IDENTITY: tuple[float, ...] = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
LEGACY: dict[str, float] = {"fill": 0.0, "fill_r": 0.0, "fill_g": 0.0, "fill_b": 0.0, "keep_black": 0.0}
FILL_CONSTANT, FILL_EDGE, FILL_REFLECT = 0, 1, 2
FILL_CODE_NAMES = {FILL_CONSTANT: "constant", FILL_EDGE: "edge", FILL_REFLECT: "reflect"}


def upgrade_view_params(params: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """``params [N, V, P]`` with columns ``names`` in the current layout (absent columns: ``LEGACY``).

    A layout with a column this version does not know is returned unchanged (a foreign or newer cache).
    """
    names = list(names)
    if names == list(VIEW_PARAM_NAMES) or not set(names) <= set(VIEW_PARAM_NAMES):
        return params, names
    out = np.empty((*params.shape[:2], len(VIEW_PARAM_NAMES)), dtype=np.float32)
    for j, name in enumerate(VIEW_PARAM_NAMES):
        out[..., j] = params[..., names.index(name)] if name in names else LEGACY.get(name, IDENTITY[j])
    return out, list(VIEW_PARAM_NAMES)


def describe_fills(params: np.ndarray) -> dict[str, int]:
    """Images per fill actually used, read from view 1 (``{}`` for one view), e.g. ``{"black": 40}``."""
    if params.ndim != 3 or params.shape[1] < 2 or params.shape[2] != len(VIEW_PARAM_NAMES):
        return {}
    row = params[:, 1]
    col = {name: row[:, j] for j, name in enumerate(VIEW_PARAM_NAMES)}
    counts: dict[str, int] = {}
    for i in range(row.shape[0]):
        code = int(col["fill"][i])
        rgb = [round(float(col[f"fill_{c}"][i]) * 255) for c in "rgb"]
        if code != FILL_CONSTANT:
            name = FILL_CODE_NAMES.get(code, f"code {code}")
        else:
            name = "black" if not any(rgb) else "colour"
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
