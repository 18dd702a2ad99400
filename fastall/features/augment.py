"""The paper's augmentations, drawn per (seed, image, view) and applied per sample on any device.

Parameters are a pure function of ``(seed, image index, view index)`` and the image's fill (a function of
its pixels and ``--fill``), so features never depend on batch size, worker count, device or resume point.
View 0 is the identity and reproduces its input bit for bit. Geometry runs through per-sample affine grids
(``affine_grid``/``grid_sample``), so a whole batch of independently augmented images costs one kernel launch
per operation and fill mode, on the GPU where there is one; the fill modes present are read from the
parameters on the host, so nothing waits for the device.

The uncovered corners of a rotated or zoomed-out view are filled per image: a constant colour (black, as the
paper, or ``constant:R,G,B``, or the median colour of the image border), edge padding or reflect padding.
``auto`` keeps black where the image border is black (C-NMC) and uses ``AUTO_LIGHT`` elsewhere, chosen by
``benchmarks/fill_choice.py``. The contrast jitter leaves black pixels black (``keep_black``), so a black
background stays black in every view.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch

from fastall.errors import FastallError
from fastall.viewparams import (
    ERASE_VALUE,
    FILL_EDGE,
    FILL_REFLECT,
    IDENTITY,
    VIEW_PARAM_NAMES,
)

FILLS = ("auto", "black", "reflect", "edge", "median")
FILL_FORMS = "auto, black, reflect, edge, median or constant:R,G,B (each 0-255, e.g. constant:235,230,240)"
AUTO_LIGHT = "median"
BLACK_LEVEL, BLACK_SHARE = 16, 0.75
_CONSTANT = re.compile(r"constant:(\d{1,3}),(\d{1,3}),(\d{1,3})")

AUGMENT_CONFIG: dict = {
    "version": 2,
    "rng": "numpy default_rng([seed, image_index, view]) per view; view 0 identity",
    "hflip_p": 0.5,
    "vflip_p": 0.5,
    "rotation_deg": 15.0,
    "zoom": [0.9, 1.1],
    "brightness": 0.2,
    "contrast": 0.2,
    "contrast_keeps_black": True,
    "erase_p": 0.1,
    "erase_scale": [0.02, 0.33],
    "erase_ratio": [0.3, 3.3],
    "erase_value": ERASE_VALUE,
    "fill": "per image in view_params (fill, fill_r, fill_g, fill_b) from --fill (key_params fill)",
    "auto_fill": {
        "black_if": f"at least {BLACK_SHARE:.0%} of the 1-px border has every channel <= {BLACK_LEVEL}",
        "otherwise": AUTO_LIGHT,
    },
    "interpolation": "bilinear",
    "order": "flip, rotate+zoom (+fill), brightness, contrast, erase",
}

_P = {name: i for i, name in enumerate(VIEW_PARAM_NAMES)}


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


def parse_fill(text: str) -> str:
    """The normalised ``--fill`` value (``constant:R,G,B`` without spaces); a one-line error otherwise."""
    value = str(text).strip().lower().replace(" ", "")
    m = _CONSTANT.fullmatch(value)
    if value in FILLS or (m and all(int(c) <= 255 for c in m.groups())):
        return value if not m else "constant:" + ",".join(str(int(c)) for c in m.groups())
    raise FastallError(f"--fill {text!r}: use {FILL_FORMS}")


def _border(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, R]``: the outermost ring of pixels of each image."""
    top, bottom = images[..., 0, :], images[..., -1, :]
    left, right = images[..., 1:-1, 0], images[..., 1:-1, -1]
    return torch.cat([top, bottom, left, right], dim=-1)


def _fixed_fill(spec: str, ring: torch.Tensor) -> np.ndarray:
    out = np.zeros((ring.shape[0], 4), dtype=np.float32)
    if spec == "edge":
        out[:, 0] = FILL_EDGE
    elif spec == "reflect":
        out[:, 0] = FILL_REFLECT
    elif spec == "median":
        out[:, 1:] = ring.median(dim=-1).values.float().numpy() / 255
    elif spec.startswith("constant:"):
        out[:, 1:] = np.array([int(c) for c in spec.split(":")[1].split(",")], dtype=np.float32) / 255
    return out


def resolve_fill(images: torch.Tensor, fill: str) -> np.ndarray:
    """float32 ``[B, 4]`` (fill code, r, g, b in [0, 1]) each uint8 image ``[B, 3, H, W]`` uses for ``fill``.

    ``auto``: black where the border is black, else ``AUTO_LIGHT``.
    """
    spec = parse_fill(fill)
    ring = _border(images.cpu())
    if spec != "auto":
        return _fixed_fill(spec, ring)
    black = ((ring.amax(dim=1) <= BLACK_LEVEL).float().mean(dim=-1) >= BLACK_SHARE).numpy()
    return np.where(black[:, None], _fixed_fill("black", ring), _fixed_fill(AUTO_LIGHT, ring))


def draw_view_params(
    seed: int, image_indices: Sequence[int] | np.ndarray, views: int, fill: np.ndarray | None = None
) -> np.ndarray:
    """float32 ``[B, views, P]``: view 0 identity; view v >= 1 from ``default_rng([seed, index, v])``.

    ``fill [B, 4]`` (from :func:`resolve_fill`; ``None``: black) goes into every augmented view.
    """
    indices = [int(i) for i in np.asarray(image_indices).reshape(-1)]
    out = np.empty((len(indices), views, len(VIEW_PARAM_NAMES)), dtype=np.float32)
    out[:, :] = IDENTITY
    for row, index in enumerate(indices):
        for view in range(1, views):
            out[row, view, : _P["fill"]] = _draw_one(np.random.default_rng([seed, index, view]))
    if fill is not None:
        out[:, 1:, _P["fill"] : _P["fill_b"] + 1] = np.asarray(fill, dtype=np.float32)[:, None]
    out[:, 1:, _P["keep_black"]] = 1.0
    return out
