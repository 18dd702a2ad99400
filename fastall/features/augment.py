"""The paper's augmentations, drawn per (seed, image, view) and applied per sample on any device.

Parameters are a pure function of ``(seed, image index, view index)``, so features never depend on batch
size, worker count, device or resume point. View 0 is the identity and reproduces its input bit for bit.
Geometry runs through per-sample affine grids (``affine_grid``/``grid_sample``, black fill), so a whole batch
of independently augmented images costs one kernel launch per operation, on the GPU where there is one, and
nothing waits for the device (no host synchronisation).
"""

from __future__ import annotations

import math
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
)
IDENTITY: tuple[float, ...] = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)

AUGMENT_CONFIG: dict = {
    "version": 1,
    "rng": "numpy default_rng([seed, image_index, view]) per view; view 0 identity",
    "hflip_p": 0.5,
    "vflip_p": 0.5,
    "rotation_deg": 15.0,
    "zoom": [0.9, 1.1],
    "brightness": 0.2,
    "contrast": 0.2,
    "erase_p": 0.1,
    "erase_scale": [0.02, 0.33],
    "erase_ratio": [0.3, 3.3],
    "erase_value": 0.0,
    "fill": 0.0,
    "interpolation": "bilinear",
    "order": "flip, rotate+zoom, brightness, contrast, erase",
}

_P = {name: i for i, name in enumerate(VIEW_PARAM_NAMES)}
_GRAY = (0.2989, 0.587, 0.114)


def _draw_one(rng: np.random.Generator) -> list[float]:
    cfg = AUGMENT_CONFIG
    hflip = float(rng.random() < cfg["hflip_p"])
    vflip = float(rng.random() < cfg["vflip_p"])
    angle = rng.uniform(-cfg["rotation_deg"], cfg["rotation_deg"])
    scale = rng.uniform(*cfg["zoom"])
    brightness = rng.uniform(1 - cfg["brightness"], 1 + cfg["brightness"])
    contrast = rng.uniform(1 - cfg["contrast"], 1 + cfg["contrast"])
    box = [0.0, 0.0, 0.0, 0.0, 0.0]
    if rng.random() < cfg["erase_p"]:
        log_lo, log_hi = math.log(cfg["erase_ratio"][0]), math.log(cfg["erase_ratio"][1])
        for _ in range(10):  # torchvision RandomErasing.get_params, in fractions of the image side
            area = rng.uniform(*cfg["erase_scale"])
            ratio = math.exp(rng.uniform(log_lo, log_hi))
            h, w = math.sqrt(area * ratio), math.sqrt(area / ratio)
            if h < 1 and w < 1:
                box = [1.0, rng.random() * (1 - h), rng.random() * (1 - w), h, w]
                break
    return [hflip, vflip, angle, scale, brightness, contrast, *box]


def draw_view_params(seed: int, image_indices: Sequence[int] | np.ndarray, views: int) -> np.ndarray:
    """float32 ``[B, views, P]``: view 0 identity; view v >= 1 from ``default_rng([seed, index, v])``."""
    indices = [int(i) for i in np.asarray(image_indices).reshape(-1)]
    out = np.empty((len(indices), views, len(VIEW_PARAM_NAMES)), dtype=np.float32)
    out[:, :] = IDENTITY
    for row, index in enumerate(indices):
        for view in range(1, views):
            out[row, view] = _draw_one(np.random.default_rng([seed, index, view]))
    return out


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


def apply_view_params(x01: torch.Tensor, params: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Augment float ``[B, 3, H, W]`` in [0, 1] with per-sample ``params [B, P]``; identity rows are exact."""
    p = torch.as_tensor(params, dtype=torch.float32).to(x01.device, non_blocking=True)
    if p.shape != (x01.shape[0], len(VIEW_PARAM_NAMES)):
        raise ValueError(f"view params of shape {tuple(p.shape)} for {x01.shape[0]} images")
    x = x01.float()
    geometric = (
        (p[:, _P["hflip"]] > 0.5)
        | (p[:, _P["vflip"]] > 0.5)
        | (p[:, _P["angle"]] != 0)
        | (p[:, _P["scale"]] != 1)
    )
    grid = F.affine_grid(_affine_theta(p), list(x.shape), align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = torch.where(geometric[:, None, None, None], warped, x)  # no host sync; identity rows stay exact
    x = (x * p[:, _P["brightness"], None, None, None]).clamp(0, 1)
    gray = sum(w * x[:, c] for c, w in enumerate(_GRAY))
    mean = gray.mean(dim=(-2, -1), keepdim=True)[:, None]
    c = p[:, _P["contrast"], None, None, None]
    x = (c * x + (1 - c) * mean).clamp(0, 1)
    return x.masked_fill(_erase_mask(p, x.shape[-2], x.shape[-1]), AUGMENT_CONFIG["erase_value"])
