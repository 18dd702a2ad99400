"""Drawn white blood cells for the synthetic data: class morphology, patient looks, backgrounds, BMP bytes.

Classes lie on one morphology axis, the typicality ``t``: 0 is a textbook hem (normal) cell, small and round
with a dark, coarsely clumped nucleus; 1 a textbook ALL blast, larger, with a larger nucleus-to-cytoplasm
ratio, an irregular contour, fine pale chromatin and nucleoli. Each class draws its patients' typicality from
a range (:func:`typicality_ranges`; the class margin is the gap between neighbouring ranges), and each patient
has its own stain, illumination and cell size, scaled by the patient effect. Backgrounds: ``black`` (C-NMC's
segmented cells), ``light`` (a bright-field slide) and ``smear`` (light, with faint neighbouring red cells).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from fastall.errors import FastallError

BACKGROUNDS = ("black", "light", "smear")
DIFFICULTY = {"easy": (None, 1.0), "hard": (0.5, 2.0)}
CLASS = {
    "all": {
        "cell": 0.62,
        "ncr": 0.86,
        "cell_wobble": 0.06,
        "nuc_wobble": 0.08,
        "freq": (9.0, 16.0),
        "tex": 0.08,
        "nucleoli": 0.45,
        "nucleus": (0.50, 0.34, 0.64),
        "cytoplasm": (0.72, 0.64, 0.86),
    },
    "hem": {
        "cell": 0.40,
        "ncr": 0.70,
        "cell_wobble": 0.015,
        "nuc_wobble": 0.02,
        "freq": (2.5, 5.0),
        "tex": 0.22,
        "nucleoli": 0.0,
        "nucleus": (0.33, 0.18, 0.45),
        "cytoplasm": (0.78, 0.70, 0.90),
    },
}
LEGACY_TYPICALITY = {"hem": (0.0, 0.15), "all": (0.65, 1.0)}
_WOBBLE_ORDERS = np.arange(2, 7, dtype=np.float32)
_TEXTURE_WAVES = 5
_NUCLEOLI = 3
_RED_CELLS = 8
_RED_CELL = np.array([0.88, 0.55, 0.60], dtype=np.float32)


@dataclass(frozen=True)
class Appearance:
    """How the cells look: background, class margin (None: the default ranges) and patient effect."""

    background: str = "black"
    class_margin: float | None = None
    patient_effect: float = 1.0


def appearance(
    background: str = "black",
    difficulty: str = "easy",
    class_margin: float | None = None,
    patient_effect: float | None = None,
) -> Appearance:
    """Resolve a ``difficulty`` preset, with ``class_margin``/``patient_effect`` overriding it (checked)."""
    if background not in BACKGROUNDS:
        raise FastallError(f"background {background!r}: use {', '.join(BACKGROUNDS)}")
    if difficulty not in DIFFICULTY:
        raise FastallError(f"difficulty {difficulty!r}: use {', '.join(DIFFICULTY)}")
    margin, effect = DIFFICULTY[difficulty]
    margin = margin if class_margin is None else float(class_margin)
    effect = effect if patient_effect is None else float(patient_effect)
    if margin is not None and not -1.0 <= margin <= 1.0:
        raise FastallError(f"class margin must be between -1 and 1, got {margin}")
    if not 0.0 <= effect <= 5.0:
        raise FastallError(f"patient effect must be between 0 and 5, got {effect}")
    return Appearance(background, margin, effect)


def typicality_ranges(classes: int, margin: float | None) -> list[tuple[float, float]]:
    """Each class's range of patient typicality, side by side and centred on 0.5.

    ``margin``: the gap between neighbouring ranges as a fraction of their spacing (1: every patient
    textbook, 0: touching, < 0: overlapping). Neighbouring classes are as far apart as two classes in [0, 1]
    while the whole span fits in [-0.5, 1.5] (beyond the textbook cells, the morphology extrapolates), so a
    K-class tree is about as hard per pair of classes as a 2-class one. ``None`` is 0.5, except for two
    classes: the original ranges, hem (0, 0.15) and ALL (0.65, 1).
    """
    if margin is None and classes == 2:
        return [LEGACY_TYPICALITY["hem"], LEGACY_TYPICALITY["all"]]
    m = 0.5 if margin is None else margin
    spacing = min(1.0 / (2 - m), 2.0 / (classes - m))
    width = (1 - m) * spacing
    start = 0.5 - ((classes - 1) * spacing + width) / 2
    return [(start + k * spacing, start + k * spacing + width) for k in range(classes)]


def _morphology(t: float) -> dict:
    """Class morphology at typicality ``t``: 0 is a textbook hem cell, 1 a textbook ALL blast."""
    hem, blast = CLASS["hem"], CLASS["all"]
    return {key: np.asarray(hem[key]) + t * (np.asarray(blast[key]) - np.asarray(hem[key])) for key in hem}


def patient_look(rng: np.random.Generator, typicality: tuple[float, float], effect: float = 1.0) -> dict:
    """A patient's morphology (some patients are atypical), stain, illumination and cell-size offset; their
    spread is ``effect`` times the default."""
    spec = _morphology(float(rng.uniform(*typicality)))
    return {
        "spec": spec,
        "scale": float(np.exp(rng.normal(0, 0.09 * effect))),
        "ncr": float(rng.normal(0, 0.025 * effect)),
        "nucleus": np.asarray(spec["nucleus"]) * np.exp(rng.normal(0, 0.09 * effect, 3)),
        "cytoplasm": np.asarray(spec["cytoplasm"]) * np.exp(rng.normal(0, 0.06 * effect, 3)),
        "gain": float(np.exp(rng.normal(0, 0.08 * effect))),
        "gradient": rng.normal(0, 0.08 * effect, 2),
    }


def slide_colour(rng: np.random.Generator, effect: float = 1.0) -> np.ndarray:
    """A patient's light background (bright-field slide) colour."""
    return np.clip(np.array([0.93, 0.89, 0.93]) * np.exp(rng.normal(0, 0.02 * effect, 3)), 0, 1)


def background_params(
    rng: np.random.Generator, background: str, colour: np.ndarray | None, n: int
) -> dict[str, np.ndarray]:
    """Per-image background parameters: none on black; the slide colour; and for a smear, red cells."""
    if background == "black":
        return {}
    out = {"bg": np.broadcast_to(colour, (n, 3))}
    if background == "smear":
        count = _RED_CELLS
        radius = rng.uniform(0.22, 0.32, (n, count))
        distance, angle = rng.uniform(0.5, 1.1, (n, count)), rng.uniform(0, 2 * np.pi, (n, count))
        shown = rng.uniform(0, 1, (n, count)) < 0.7
        out.update(
            {
                "rx": distance * np.cos(angle),
                "ry": distance * np.sin(angle),
                "rr": radius,
                "ra": shown * rng.uniform(0.25, 0.45, (n, count)),
            }
        )
    return out


def image_params(rng: np.random.Generator, look: dict, n: int) -> dict[str, np.ndarray]:
    spec = look["spec"]
    k, w, m = len(_WOBBLE_ORDERS), _TEXTURE_WAVES, _NUCLEOLI
    rc = spec["cell"] * look["scale"] * np.exp(rng.normal(0, 0.06, n))
    ncr = np.clip(spec["ncr"] + look["ncr"] + rng.normal(0, 0.03, n), 0.45, 0.95)
    shift = (1 - ncr) * rc * rng.uniform(0.2, 0.7, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    decay = 1.0 / (_WOBBLE_ORDERS - 1)
    spot_r, spot_a = rng.uniform(0, 0.55, (n, m)), rng.uniform(0, 2 * np.pi, (n, m))
    present = rng.uniform(0, 1, (n, m)) < np.array([1.0, 0.6, 0.3])
    return {
        "cx": rng.normal(0, 0.03, n),
        "cy": rng.normal(0, 0.03, n),
        "rc": rc,
        "rn": ncr * rc,
        "nx": shift * np.cos(angle),
        "ny": shift * np.sin(angle),
        "ca": spec["cell_wobble"] * decay * rng.uniform(0.3, 1.0, (n, k)),
        "cp": rng.uniform(0, 2 * np.pi, (n, k)),
        "na": spec["nuc_wobble"] * decay * rng.uniform(0.3, 1.0, (n, k)),
        "np": rng.uniform(0, 2 * np.pi, (n, k)),
        "tf": rng.uniform(*spec["freq"], (n, w)),
        "ta": rng.uniform(0, 2 * np.pi, (n, w)),
        "tp": rng.uniform(0, 2 * np.pi, (n, w)),
        "tex": spec["tex"] * rng.uniform(0.7, 1.3, n),
        "ox": spot_r * np.cos(spot_a),
        "oy": spot_r * np.sin(spot_a),
        "oa": spec["nucleoli"] * present * rng.uniform(0.6, 1.0, (n, m)),
        "nucleus": np.broadcast_to(look["nucleus"], (n, 3)),
        "cytoplasm": np.broadcast_to(look["cytoplasm"], (n, 3)),
        "gain": look["gain"] * np.exp(rng.normal(0, 0.03, n)),
        "gx": look["gradient"][0] + rng.normal(0, 0.02, n),
        "gy": look["gradient"][1] + rng.normal(0, 0.02, n),
    }


def render(p: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [n, size, size, 3] RGB images of one cell each, on black unless ``p`` has background params."""
    f32 = {key: np.asarray(v, dtype=np.float32) for key, v in p.items()}

    def col(key: str, j: int | None = None) -> np.ndarray:
        v = f32[key] if j is None else f32[key][:, j]
        return v[:, None, None]

    def outline(radius: np.ndarray, dx: np.ndarray, dy: np.ndarray, amp: str, phase: str) -> np.ndarray:
        theta = np.arctan2(dy, dx)
        wobble = sum(col(amp, j) * np.cos(o * theta + col(phase, j)) for j, o in enumerate(_WOBBLE_ORDERS))
        inside = radius * (1 + wobble) - np.sqrt(dx * dx + dy * dy)
        return np.clip(inside * np.float32(size / 2) + 0.5, 0, 1)

    g = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    x, y = g[None, None, :], g[None, :, None]
    dx, dy = x - col("cx"), y - col("cy")
    cell = outline(col("rc"), dx, dy, "ca", "cp")
    ndx, ndy = dx - col("nx"), dy - col("ny")
    nucleus = (outline(col("rn"), ndx, ndy, "na", "np") * cell)[..., None]
    u, v = ndx / col("rn"), ndy / col("rn")
    two_pi = np.float32(2 * np.pi)
    texture = sum(
        np.sin(two_pi * col("tf", j) * (u * np.cos(col("ta", j)) + v * np.sin(col("ta", j))) + col("tp", j))
        for j in range(_TEXTURE_WAVES)
    )
    texture = texture * col("tex") / np.float32(np.sqrt(_TEXTURE_WAVES))
    spots = sum(
        col("oa", j) * np.exp(((u - col("ox", j)) ** 2 + (v - col("oy", j)) ** 2) / np.float32(-0.03))
        for j in range(_NUCLEOLI)
    )
    spots = np.clip(spots, 0, 1)[..., None]
    cytoplasm, nuc = f32["cytoplasm"][:, None, None, :], f32["nucleus"][:, None, None, :]
    nuc = nuc * (1 + texture[..., None])
    nuc = nuc + (cytoplasm * np.float32(0.9) - nuc) * spots
    rgb = cytoplasm * (1 - nucleus) + nuc * nucleus
    light = col("gain") * (1 + col("gx") * x + col("gy") * y)
    grain = (rng.random(cell.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(0.05)
    if "bg" not in f32:
        rgb = (rgb * light[..., None] + grain[..., None]) * cell[..., None]
        return np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
    slide = f32["bg"][:, None, None, :] * np.ones_like(rgb)
    for j in range(f32["rr"].shape[1] if "rr" in f32 else 0):
        d = np.sqrt((x - col("rx", j)) ** 2 + (y - col("ry", j)) ** 2) / col("rr", j)
        disc = np.clip((1 - d) * col("rr", j) * np.float32(size / 2) + 0.5, 0, 1)
        alpha = (col("ra", j) * disc * (1 - np.float32(0.45) * np.exp(-(d**2) / np.float32(0.12))))[..., None]
        slide = slide * (1 - alpha) + _RED_CELL * alpha
    rgb = (slide * (1 - cell[..., None]) + rgb * cell[..., None]) * light[..., None] + grain[..., None]
    return np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)


def bmp_bytes(img: np.ndarray) -> bytes:
    """A 24-bit bottom-up BMP of an RGB uint8 [H, W, 3] array."""
    h, w, _ = img.shape
    row = w * 3
    data = np.zeros((h, row + (-row) % 4), dtype=np.uint8)
    data[:, :row] = img[::-1, :, ::-1].reshape(h, row)
    header = struct.pack("<2sIHHI", b"BM", 54 + data.size, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, data.size, 2835, 2835, 0, 0)
    return header + info + data.tobytes()
