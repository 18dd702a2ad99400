"""The augmented views, below ``preprocess``: the column layout of ``view_params`` (a row per image and view,
shared by the augmentation, the cache and inference) and :func:`apply_view_params`, the one view transform.

Columns 0-10 are the paper's augmentation; the fill columns came later (``fill``: 0 a constant colour given by
``fill_r/g/b`` in [0, 1], black when all are 0; 1 edge padding; 2 reflect padding) with ``keep_black`` (1: the
contrast jitter leaves pixels that are black in every channel black). A cache written before them reads as
black fill and the paper's contrast: :func:`upgrade_view_params` fills absent columns with ``LEGACY``.
Drawing the parameters and the fills is ``fastall.features.augment``'s; applying them is this module's, so
that ``fastall.preprocess`` (used by extraction and the end-to-end model alike) imports no stage package.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

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
ERASE_VALUE = 0.0
_P = {name: i for i, name in enumerate(VIEW_PARAM_NAMES)}
_GRAY = (0.2989, 0.587, 0.114)


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


def _affine_theta(p: torch.Tensor) -> torch.Tensor:
    """Output->input map per sample: flip . rotate(-angle) . out / scale (angle as torchvision's rotate)."""
    a = torch.deg2rad(p[:, _P["angle"]])
    cos, sin, s = torch.cos(a), torch.sin(a), p[:, _P["scale"]]
    fx = 1 - 2 * (p[:, _P["hflip"]] > 0.5).to(p.dtype)
    fy = 1 - 2 * (p[:, _P["vflip"]] > 0.5).to(p.dtype)
    zero = torch.zeros_like(a)
    row0 = torch.stack([fx * cos / s, fx * sin / s, zero], dim=1)
    row1 = torch.stack([-fy * sin / s, fy * cos / s, zero], dim=1)
    return torch.stack([row0, row1], dim=1)


def _erase_mask(p: torch.Tensor, size_h: int, size_w: int) -> torch.Tensor:
    """bool ``[B, 1, H, W]``: the erased box of each sample (all false where erase is off)."""
    top = torch.round(p[:, _P["erase_top"]] * size_h)
    left = torch.round(p[:, _P["erase_left"]] * size_w)
    height = torch.round(p[:, _P["erase_height"]] * size_h)
    width = torch.round(p[:, _P["erase_width"]] * size_w)
    rows = torch.arange(size_h, device=p.device, dtype=p.dtype)[None, :]
    cols = torch.arange(size_w, device=p.device, dtype=p.dtype)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & (p[:, _P["erase"]] > 0.5)[:, None, None]
    return mask[:, None]


def _warp(x: torch.Tensor, p: torch.Tensor, host: torch.Tensor, geometric: torch.Tensor) -> torch.Tensor:
    """Rotate, zoom and flip every geometric row, filling the uncovered area per row's fill mode."""
    grid = F.affine_grid(_affine_theta(p), list(x.shape), align_corners=False)
    codes = host[:, _P["fill"]][_geometric(host)].round().long().unique().tolist()
    warped = x
    for code in codes:
        padding = {FILL_EDGE: "border", FILL_REFLECT: "reflection"}.get(code, "zeros")
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)
        colour = host[:, _P["fill_r"] : _P["fill_b"] + 1]
        if padding == "zeros" and bool((colour != 0).any()):
            ones = torch.ones_like(x[:, :1])
            cover = F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            rgb = p[:, _P["fill_r"] : _P["fill_b"] + 1, None, None]
            out = out + (1 - cover) * rgb
        rows = (p[:, _P["fill"]].round() == code) & geometric
        warped = torch.where(rows[:, None, None, None], out, warped)  # identity rows stay exact
    return warped


def _geometric(p: torch.Tensor) -> torch.Tensor:
    return (
        (p[:, _P["hflip"]] > 0.5)
        | (p[:, _P["vflip"]] > 0.5)
        | (p[:, _P["angle"]] != 0)
        | (p[:, _P["scale"]] != 1)
    )


def apply_view_params(x01: torch.Tensor, params: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Augment float ``[B, 3, H, W]`` in [0, 1] with per-sample ``params [B, P]``; identity rows are exact.

    Pass ``params`` on the host (numpy or a CPU tensor) to keep the device free of synchronisation.
    """
    host = torch.as_tensor(params, dtype=torch.float32)
    host = host.cpu() if host.device.type != "cpu" else host
    if host.shape != (x01.shape[0], len(VIEW_PARAM_NAMES)):
        raise ValueError(f"view params of shape {tuple(host.shape)} for {x01.shape[0]} images")
    p = host.to(x01.device, non_blocking=True)
    x = _warp(x01.float(), p, host, _geometric(p))
    x = (x * p[:, _P["brightness"], None, None, None]).clamp(0, 1)
    black = (x == 0).all(dim=1, keepdim=True) & (p[:, _P["keep_black"]] > 0.5)[:, None, None, None]
    gray = sum(w * x[:, c] for c, w in enumerate(_GRAY))
    mean = gray.mean(dim=(-2, -1), keepdim=True)[:, None]
    c = p[:, _P["contrast"], None, None, None]
    x = (c * x + (1 - c) * mean).clamp(0, 1).masked_fill(black, 0.0)
    return x.masked_fill(_erase_mask(p, x.shape[-2], x.shape[-1]), ERASE_VALUE)
