"""Leukocytes found in a blood-smear image: boxes around whole cells, with the image's own scale.

The ``stain`` method is classical (scikit-image) and needs no weights. Its steps, and why:

1. **Working resolution.** The image is shrunk (box filter) so its long side is at most 400 px: in a 640x480
   field a leukocyte still spans tens of pixels, and every later step costs a fraction of the full-size one.
   A larger field whose red cells come out under 16 px is looked at again at the scale that makes them
   about 40 px.
2. **Background.** The median colour of the image border is the slide. A dark slide is not a bright-field
   smear: one bright centred object is a segmented single-cell crop (C-NMC), anything else cannot be
   separated by this method. An image without colour (greyscale) cannot be separated either: both are one
   line that names ``--method``.
3. **Colour deconvolution.** The haematoxylin column of ``skimage.color.hed_from_rgb`` (Ruifrok & Johnston,
   what ``rgb2hed`` computes) turns optical density into the amount of the haematoxylin-like stain. In
   Romanowsky stains (Wright, Giemsa, May-Grünwald) leukocyte nuclei take the
   violet azure dye that this channel measures; red cells (eosin, pink) and the slide are near zero.
   The channel is smoothed (Gaussian, 1 px) against JPEG noise.
4. **Thresholds.** Nuclei: Otsu's threshold of the channel, at least ``NUCLEUS_CONTRAST`` above the slide (so
   a smear without any leukocyte finds none instead of splitting noise). Whole cells: a lower threshold
   (``CELL_FRACTION`` of the way from slide to nucleus) that keeps the pale blue cytoplasm but not red cells.
5. **Scale.** Red cells are the ruler every smear carries (about 7.5 µm): twice the inscribed radius
   (distance-transform peak) of the unstained objects darker than the slide is the red-cell diameter ``d``
   (its upper quartile over compact objects off the border, filling over 0.6 of their box: fragments cut
   by leukocytes and debris peak lower, a clump of overlapping red cells still peaks at about one cell's
   radius). Without enough red
   cells (a crop of one cell), ``d`` is the long side / 9 (a 640x480 field at 100x) and no upper size limit
   applies. All sizes below are in ``d``.
6. **Morphology.** Closing (a square of half-side ``0.12 d``, separable max/min filters) joins the lobes
   of a segmented nucleus and the granules of a cytoplasm; holes are filled (a pale nucleus centre).
7. **Watershed for touching cells.** Each peak of the distance transform of the cell mask (at least
   ``0.6 d`` apart: one per round cell, whatever its nucleus's lobes) seeds a watershed on the mask, so
   touching leukocytes part where their outlines meet. Outside the image counts as background, so a cell
   cut by the edge keeps its own peak.
8. **Filters.** A leukocyte region holds a nucleus of at least ``0.12 d²`` (a platelet, about ``0.3 d``
   across, holds less), spans ``0.8 d`` to ``4 d`` (debris is smaller, a clump larger) and is solid
   (``solidity ≥ 0.7``: stain streaks are not). Its box is the region's bounding box at full resolution.

``score`` is the region's solidity times its nucleus-stain contrast (capped at 1). An image with exactly one
large, centred cell is a single-cell image (``kind="single cell"``), not a smear of one cell.

``cellpose`` runs Cellpose (the ``cellpose`` extra) and applies the same size filter on its masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from fastall.errors import FastallError

METHODS = ("stain", "cellpose")
WORK_SIDE = 400
NUCLEUS_CONTRAST = 0.035
CELL_FRACTION = 0.35
MIN_NUCLEUS_AREA = 0.12  # d²
MIN_CELL, MAX_CELL = 0.8, 4.0  # d
MIN_SOLIDITY = 0.7
BLUE_EXCESS = 0.03
RBC_PER_SIDE = 9.0
SINGLE_CENTRE, SINGLE_SIDE = 0.2, 0.45
MIN_RED_CELL_PX, TARGET_RED_CELL_PX = 16, 40  # red cells smaller than this at working size: look again


class StainError(FastallError):
    """The method cannot separate this image's stain; the message names ``--method``."""


@dataclass
class Detection:
    """Boxes ``[n, 4]`` (x0, y0, x1, y1; x1/y1 exclusive) in source pixels, with area (px) and score."""

    boxes: np.ndarray
    areas: np.ndarray
    scores: np.ndarray
    width: int
    height: int
    kind: str = "smear"  # "smear" | "single cell"
    cell_scale: float = float("nan")  # red-cell diameter in source pixels (nan: none measured)
    background: tuple[int, int, int] = (255, 255, 255)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.boxes)


def detect(image: np.ndarray, method: str = "stain") -> Detection:
    """Leukocytes of an RGB uint8 ``[H, W, 3]`` image (module docstring)."""
    if method not in METHODS:
        raise FastallError(f"--method {method!r}: use {' or '.join(METHODS)}")
    h, w = image.shape[:2]
    found = _detect_at(image, method, min(1.0, WORK_SIDE / max(h, w)))
    working = found.cell_scale * min(1.0, WORK_SIDE / max(h, w))
    if working < MIN_RED_CELL_PX and max(h, w) > WORK_SIDE:  # a large field: look again at a finer scale
        found = _detect_at(image, method, min(1.0, WORK_SIDE / max(h, w) * TARGET_RED_CELL_PX / working))
    return found


def _detect_at(image: np.ndarray, method: str, factor: float) -> Detection:
    h, w = image.shape[:2]
    small = image
    if factor < 1.0:
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    a = small.astype(np.float32) / 255.0
    bg = _border_colour(a)
    background = tuple(int(round(float(v) * 255)) for v in bg)
    if bg.mean() < 0.3:
        regions, scale = _dark_single(a, bg), float("nan")
    elif method == "cellpose":
        regions, scale = _cellpose(small), float("nan")
    else:
        regions, scale = _stain(a, bg)
    sx, sy = w / a.shape[1], h / a.shape[0]
    boxes = np.array(
        [
            [int(c0 * sx), int(r0 * sy), min(w, int(np.ceil(c1 * sx))), min(h, int(np.ceil(r1 * sy)))]
            for (r0, c0, r1, c1), _, _ in regions
        ],
        dtype=np.int64,
    ).reshape(-1, 4)
    areas = np.array([area * sx * sy for _, area, _ in regions], dtype=np.float64)
    scores = np.array([s for _, _, s in regions], dtype=np.float64)
    found = Detection(boxes, areas, scores, w, h, background=background, cell_scale=scale * sx)
    if bg.mean() < 0.3 or _single(found):
        found.kind = "single cell"
    return found


def _border_colour(a: np.ndarray) -> np.ndarray:
    """The slide: the median of the brighter half of the border (red cells cover much of a dense one)."""
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    lum = edge.mean(1)
    return np.median(edge[lum >= np.percentile(lum, 50)], axis=0)


def _dark_single(a: np.ndarray, bg: np.ndarray) -> list:
    """A segmented single cell on black: the largest bright object, or a StainError when it is not one."""
    from skimage.measure import label, regionprops

    mask = a.mean(2) > bg.mean() + 0.1
    props = sorted(regionprops(label(mask)), key=lambda p: -p.area)
    if not props or props[0].area < 0.02 * mask.size:
        return []
    if len(props) > 1 and props[1].area > 0.3 * props[0].area:
        raise StainError(
            "dark background with several objects (fluorescence?): the stain method reads bright-field "
            "smears; try --method cellpose"
        )
    return [(props[0].bbox, float(props[0].area), 1.0)]


def _stain(a: np.ndarray, bg: np.ndarray) -> tuple[list, float]:
    from skimage.color import hed_from_rgb
    from skimage.filters import threshold_otsu
    from skimage.measure import regionprops
    from skimage.morphology import remove_small_objects

    lum = a.mean(2)
    objects = lum < bg.mean() - 0.06
    if objects.mean() < 0.002:
        return [], float("nan")  # a bare slide: nothing to find
    if float(np.percentile((a.max(2) - a.min(2))[objects], 99)) < 0.06:
        raise StainError(
            "no stain colour to separate (a greyscale image?): the stain method needs a Romanowsky-stained "
            "colour smear; try --method cellpose"
        )
    optical_density = np.log(np.clip(a, 1e-6, 1)) / np.float32(np.log(1e-6))  # rgb2hed's scale
    haematoxylin = np.clip(optical_density @ hed_from_rgb[:, 0].astype(np.float32), 0, None)
    stain = ndi.gaussian_filter(haematoxylin, 1.0)
    slide = float(np.median(stain[::3, ::3]))
    cut = max(float(threshold_otsu(stain)), slide + NUCLEUS_CONTRAST)
    nuclei = stain > cut
    if nuclei.mean() > 0.4:
        raise StainError(
            f"the nucleus stain covers {nuclei.mean():.0%} of the image, so nuclei cannot be told from the "
            "rest; try --method cellpose"
        )
    measured = _red_cell_diameter(lum < bg.mean() - 0.08, nuclei)
    d = measured or max(a.shape[:2]) / RBC_PER_SIDE
    largest = MAX_CELL * d if measured else float(min(a.shape[:2]))
    radius = max(1, round(0.12 * d))
    nuclei = remove_small_objects(nuclei, max_size=max(2, int(0.02 * d * d)))
    blue = ndi.gaussian_filter(a[..., 2] - a[..., 0], 1.0)
    cytoplasm = blue > float(bg[2] - bg[0]) + BLUE_EXCESS
    cells = (stain > slide + CELL_FRACTION * (cut - slide)) | cytoplasm
    cells = ndi.binary_fill_holes(_closing(cells | nuclei, radius))
    cells = remove_small_objects(cells, max_size=max(4, int(0.3 * d * d)))
    regions = _watershed(cells, d if measured else min(a.shape[:2]) / 4)
    out = []
    for p in regionprops(regions, intensity_image=stain):
        nucleus = nuclei[p.slice] & p.image
        across = p.equivalent_diameter_area
        if nucleus.sum() < MIN_NUCLEUS_AREA * d * d or not MIN_CELL * d <= across <= largest:
            continue
        if p.solidity < MIN_SOLIDITY:
            continue
        contrast = (float(stain[p.slice][nucleus].mean()) - slide) / max(cut - slide, 1e-6)
        out.append((p.bbox, float(p.area), float(p.solidity * min(1.0, contrast / 2))))
    return out, measured or float("nan")


def _closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """A closing by a (2 radius + 1) square, outside the image empty: separable max/min filters, a tenth of
    the cost of a disk."""
    size = 2 * radius + 1
    grown = ndi.maximum_filter(mask, size=size, mode="constant", cval=0)
    return ndi.minimum_filter(grown, size=size, mode="constant", cval=0) | mask


def _red_cell_diameter(darker: np.ndarray, nuclei: np.ndarray) -> float | None:
    """Twice the median inscribed radius (distance-transform peak) of the unstained objects off the border:
    a clump of overlapping red cells still peaks at one cell's radius. None when under three."""
    from skimage.measure import label, regionprops

    near = ndi.maximum_filter(nuclei, size=7)
    free = ndi.binary_opening(darker & ~near, iterations=1)
    free = ndi.binary_fill_holes(free)  # the pale centre of a biconcave red cell
    h, w = free.shape
    least = (max(h, w) / 25) ** 2
    distance = ndi.distance_transform_edt(free)
    radii = [
        float(distance[p.slice].max())
        for p in regionprops(label(free))
        if p.area >= least and min(p.bbox[:2]) > 0 and p.bbox[2] < h and p.bbox[3] < w and p.extent > 0.6
    ]
    return 2 * float(np.percentile(radii, 75)) if len(radii) >= 3 else None


def _watershed(mask: np.ndarray, d: float) -> np.ndarray:
    from skimage.feature import peak_local_max
    from skimage.measure import label
    from skimage.segmentation import watershed

    labels = label(mask)
    distance = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]  # outside the image is background
    peaks = peak_local_max(distance, min_distance=max(2, int(0.6 * d)), labels=labels, exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=mask)


def _cellpose(image: np.ndarray) -> list:
    try:
        from cellpose import models
    except ImportError:
        raise FastallError(
            "--method cellpose needs Cellpose: pip install 'fastall[cellpose]' (or use --method stain)"
        ) from None
    from skimage.measure import regionprops

    try:
        model = models.CellposeModel(gpu=False)
        masks = model.eval(image)[0]
    except Exception as err:  # weights missing offline, or a version without this API
        raise FastallError(
            f"--method cellpose: Cellpose could not run ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "install its weights or use --method stain"
        ) from None
    props = regionprops(np.asarray(masks, dtype=np.int32))
    if not props:
        return []
    typical = float(np.median([p.equivalent_diameter_area for p in props]))
    return [
        (p.bbox, float(p.area), float(p.solidity))
        for p in props
        if p.equivalent_diameter_area >= 1.3 * typical or len(props) < 3
    ]


def _single(found: Detection) -> bool:
    """One large cell near the image centre: a single-cell crop rather than a smear."""
    if len(found) != 1:
        return False
    x0, y0, x1, y1 = found.boxes[0]
    cx, cy = (x0 + x1) / 2 / found.width - 0.5, (y0 + y1) / 2 / found.height - 0.5
    side = max(x1 - x0, y1 - y0) / min(found.width, found.height)
    return abs(cx) <= SINGLE_CENTRE and abs(cy) <= SINGLE_CENTRE and side >= SINGLE_SIDE
