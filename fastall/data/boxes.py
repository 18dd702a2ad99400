"""Detection scored against annotated leukocyte boxes: precision, recall and F1 at IoU thresholds.

Annotations: a CSV with ``image,xmin,ymin,xmax,ymax`` (``image`` the smear's file name or its path relative to
the smears folder; BCCD's annotation CSV has these columns) or a folder of Pascal VOC XML files (one per
image; only objects named like a white cell, ``WBC`` or ``leukocyte``, count when any object is so named).

Matching is the PASCAL VOC rule: detections in decreasing score, each takes the unmatched annotated box of its
image with the highest IoU if that IoU reaches the threshold (a true positive), else it is a false positive;
annotated boxes left unmatched are false negatives. Confidence intervals resample smears (images) with
replacement (percentile bootstrap, 2,000 resamples): boxes of one smear share its stain and focus, so they are
not independent.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np

from fastall.errors import FastallError
from fastall.system.csvsafe import MissingColumns, read_table

COLUMNS = ("image", "xmin", "ymin", "xmax", "ymax")
IOU_THRESHOLDS = (0.5, 0.3)
RESAMPLES = 2000
LEVEL = 0.95
_WHITE = ("wbc", "leukocyte", "leucocyte", "white")

Boxes = dict[str, np.ndarray]  # image key -> [n, 4] x0, y0, x1, y1


def image_key(name: str) -> str:
    """How boxes and smears are matched: the file stem (``BloodImage_00001.jpg`` and ``.png`` agree)."""
    return PurePosixPath(str(name).replace("\\", "/")).stem


def read_boxes(path: str | Path) -> Boxes:
    """Annotated boxes from a CSV file or a folder of Pascal VOC XML files; one line for a bad file."""
    path = Path(path)
    if path.is_dir():
        return _read_voc(path)
    try:
        rows = read_table(path, COLUMNS)
    except MissingColumns as err:
        raise FastallError(f"--boxes {path}: {err}; expected {','.join(COLUMNS)}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
        raise FastallError(f"--boxes {path}: cannot read it ({reason})") from None
    out: dict[str, list] = defaultdict(list)
    for line, row in enumerate(rows, start=2):
        try:
            box = [float(row[c]) for c in COLUMNS[1:]]
        except ValueError:
            raise FastallError(f"--boxes {path}, row {line}: box coordinates must be numbers") from None
        _check_box(box, f"--boxes {path}, row {line}")
        out[image_key(row["image"])].append(box)
    if not out:
        raise FastallError(f"--boxes {path}: no rows")
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def _check_box(box: list[float], where: str) -> None:
    if not all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise FastallError(f"{where}: box {box} is empty or not finite (need xmin < xmax, ymin < ymax)")


def _read_voc(folder: Path) -> Boxes:
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise FastallError(f"--boxes {folder}: a folder without Pascal VOC .xml files")
    out: Boxes = {}
    for file in files:
        try:
            root = ET.parse(file).getroot()
        except (ET.ParseError, OSError) as err:
            raise FastallError(f"--boxes {file}: not a Pascal VOC XML file ({err})") from None
        objects = root.findall("object")
        white = [o for o in objects if (o.findtext("name") or "").strip().lower().startswith(_WHITE)]
        boxes = []
        for obj in white or objects:
            bnd = obj.find("bndbox")
            try:
                box = [float(bnd.findtext(c)) for c in COLUMNS[1:]]  # type: ignore[union-attr, arg-type]
            except (AttributeError, TypeError, ValueError):
                raise FastallError(f"--boxes {file}: an object without a numeric bndbox") from None
            _check_box(box, f"--boxes {file}")
            boxes.append(box)
        out[image_key(root.findtext("filename") or file.name)] = np.asarray(boxes, dtype=np.float64).reshape(
            -1, 4
        )
    return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [n, 4] with every box of ``b`` [m, 4]."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match(found: np.ndarray, scores: np.ndarray, truth: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` of one image by the VOC rule (module docstring)."""
    found, truth = np.asarray(found).reshape(-1, 4), np.asarray(truth).reshape(-1, 4)
    if not len(found) or not len(truth):
        return 0, len(found), len(truth)
    iou = iou_matrix(found, truth)
    taken = np.zeros(len(truth), dtype=bool)
    tp = 0
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        row = np.where(taken, -1.0, iou[i])
        j = int(row.argmax())
        if row[j] >= threshold:
            taken[j] = True
            tp += 1
    return tp, len(found) - tp, len(truth) - tp


def score_detection(
    detections: dict[str, tuple[np.ndarray, np.ndarray]],
    truth: Boxes,
    *,
    thresholds: tuple[float, ...] = IOU_THRESHOLDS,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """detection.json's content: per IoU threshold, precision/recall/F1 with smear-bootstrap CIs.

    ``detections`` maps image keys to ``(boxes, scores)``; smears without annotations are left out (and
    counted), annotated images never detected count all their boxes as missed."""
    scored = sorted(set(detections) & set(truth))
    unmatched = sorted(set(truth) - set(detections))
    images = scored + unmatched
    if not scored:
        raise FastallError("--boxes: none of the annotated images is among the smears (names must match)")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(images), (resamples, len(images)))
    out: dict = {
        "images": len(images),
        "annotated_boxes": int(sum(len(truth[k]) for k in images)),
        "detected_boxes": int(sum(len(detections[k][0]) for k in scored)),
        "smears_without_annotations": len(set(detections) - set(truth)),
        "annotated_images_not_found": unmatched,
        "ci": f"percentile bootstrap over smears, {resamples} resamples, {LEVEL:.0%}",
        "matching": "PASCAL VOC: detections by decreasing score, each to the unmatched box of highest IoU",
        "by_iou": {},
    }
    for threshold in thresholds:
        counts = np.array(
            [
                match(*detections[k], truth[k], threshold) if k in detections else (0, 0, len(truth[k]))
                for k in images
            ],
            dtype=np.float64,
        )
        out["by_iou"][f"{threshold:g}"] = _metrics(counts, picks)
    return out


def _metrics(counts: np.ndarray, picks: np.ndarray) -> dict:
    def of(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
        precision = np.divide(tp, tp + fp, out=np.full_like(tp, np.nan), where=(tp + fp) > 0)
        recall = np.divide(tp, tp + fn, out=np.full_like(tp, np.nan), where=(tp + fn) > 0)
        f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.full_like(tp, np.nan), where=(2 * tp + fp + fn) > 0)
        return {"precision": precision, "recall": recall, "f1": f1}

    total = counts.sum(0)
    point = of(*(np.array([v]) for v in total))
    boot = of(*counts[picks].sum(1).T)
    tail = (1 - LEVEL) / 2 * 100
    out: dict = {"tp": int(total[0]), "fp": int(total[1]), "fn": int(total[2])}
    for name, value in point.items():
        values = boot[name][np.isfinite(boot[name])]
        ci = (
            [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
            if values.size
            else None
        )
        out[name] = {"value": float(value[0]), "ci": ci}
    return out
