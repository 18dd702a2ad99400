"""`DIR/index.html` of `fastall explain`: one self-contained page (images inline as base64, no network)."""

from __future__ import annotations

import base64
import math
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("fastall.inference", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_index(meta: dict[str, Any], cards: list[dict[str, Any]], total: int) -> str:
    """The grid of originals and overlays (the first ``len(cards)`` of ``total`` images)."""
    shown = [
        {
            "path": c["path"],
            "name": c["image"],
            "original": _data_uri(c["original_png"]),
            "overlay": _data_uri(c["overlay_png"]),
            "predicted": c["predicted"],
            "confidence": float(c["probs"].max()),
            "target": c["target"],
            "inside": None if math.isnan(c["mass_in_cell"]) else c["mass_in_cell"],
            "cell_fraction": c["cell_fraction"],
            "training": c.get("training", ""),
        }
        for c in cards
    ]
    return _environment().get_template("explain.html.j2").render(meta=meta, cards=shown, total=total)
