"""The HTML page of `fastall cells` and `fastall screen`: each smear with its boxes, and the tables.

One self-contained page (images inline as base64 JPEG thumbnails, boxes as SVG rectangles in the source
image's pixel coordinates, no network). The library hands plain dicts; nothing here knows about models.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from fastall.data.images import BadImageError, decode_image

MAX_OVERLAYS = 200
THUMB_SIDE = 480
CELL_COLOUR = "#0a7d28"
PALETTE = ("#1f5fbf", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


@dataclass
class Overlay:
    """One smear: its image file, caption and boxes (``x0, y0, x1, y1, colour, title``)."""

    path: Path
    name: str
    caption: str
    boxes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PageTable:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    flags: list[bool] = field(default_factory=list)
    note: str = ""
    text: tuple[int, ...] = (0,)
    css: str = ""


def class_colours(class_names: list[str]) -> dict[str, str]:
    return {name: PALETTE[k % len(PALETTE)] for k, name in enumerate(class_names)}


def thumbnail(path: Path) -> tuple[str, int, int] | None:
    """``(data URI, width, height)`` of a JPEG thumbnail (the source's size); None when unreadable."""
    try:
        pixels = decode_image(path).permute(1, 2, 0).numpy()
    except BadImageError:
        return None
    h, w = pixels.shape[:2]
    im = Image.fromarray(pixels)
    im.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), w, h


def render_page(
    title: str,
    meta: list[str],
    overlays: list[Overlay],
    tables: list[PageTable],
    *,
    legend: list[tuple[str, str]],
    warnings: list[str] | None = None,
) -> str:
    """The page; overlays beyond :data:`MAX_OVERLAYS` are counted, not drawn."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("fastall.reporting", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    shown = []
    for o in overlays[:MAX_OVERLAYS]:
        thumb = thumbnail(o.path)
        if thumb is None:
            continue
        uri, w, h = thumb
        shown.append(
            {
                "name": o.name,
                "caption": o.caption,
                "image": uri,
                "width": w,
                "height": h,
                "stroke": max(2, round(max(w, h) / 200)),
                "boxes": o.boxes,
            }
        )
    page = {
        "title": title,
        "meta": meta,
        "warnings": warnings or [],
        "legend": legend,
        "overlays": shown,
        "total": len(overlays),
        "tables": [
            {
                "title": t.title,
                "columns": t.columns,
                "rows": [
                    {"cells": r, "flag": t.flags[k] if k < len(t.flags) else False}
                    for k, r in enumerate(t.rows)
                ],
                "note": t.note,
                "text": t.text,
                "css": t.css,
            }
            for t in tables
        ],
    }
    return env.get_template("smears.html.j2").render(page=page)
