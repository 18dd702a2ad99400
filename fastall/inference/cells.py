"""`fastall cells SMEARS --out CELLS`: leukocytes found and cropped, their table, their page, and with
``--boxes`` the detection scored against annotated boxes (``detection.json``).

OUT appears complete or not at all (``system.runfolder.atomic_folder``); ``cells.json`` marks it as a
fastall cells folder (what ``--overwrite`` may replace).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fastall import __version__
from fastall.data.boxes import image_key, read_boxes, score_detection
from fastall.data.smears import CropConfig, Smear, crop_cells, write_tables
from fastall.errors import FastallError
from fastall.reporting.smear_html import CELL_COLOUR, Overlay, PageTable, render_page
from fastall.system.events import Reporter, silent
from fastall.system.faults import reached
from fastall.system.files import atomic_write_text
from fastall.system.jsonable import plain
from fastall.system.runfolder import atomic_folder

FORMAT = "fastall-cells"


@dataclass
class CellsResult:
    out: Path
    smears: list[Smear]
    detection: dict | None

    @property
    def cells(self) -> int:
        return sum(s.cells for s in self.smears)


def check_inputs(inputs: list[str | Path], out: str | Path) -> None:
    """Refuse an OUT inside (or equal to) a smears folder: its crops would be read as smears next time."""
    target = Path(out).absolute()
    for p in inputs:
        source = Path(p).absolute()
        if source.is_dir() and (target == source or target.is_relative_to(source)):
            raise FastallError(f"--out {out} is inside the smears folder {p}: choose a folder outside it")


def separated_or_fail(smears: list[Smear]) -> None:
    """One line naming ``--method`` when the method separated no image at all."""
    failed = [s for s in smears if s.kind == "not separated"]
    if failed and len(failed) == len([s for s in smears if s.kind != "unreadable"]):
        raise FastallError(f"{failed[0].name}: {failed[0].note}")
    if all(s.kind == "unreadable" for s in smears):
        raise FastallError(f"none of the {len(smears)} images could be read (first: {smears[0].note})")


def run_cells(
    inputs: list[str | Path],
    out: str | Path,
    config: CropConfig | None = None,
    *,
    boxes: str | Path | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> CellsResult:
    """Detect, crop, tabulate and draw; score against ``boxes`` when given (read before any work)."""
    config = config or CropConfig()
    config.check()
    reporter = reporter or silent()
    check_inputs(inputs, out)
    truth = read_boxes(boxes) if boxes is not None else None
    with atomic_folder(out, overwrite=overwrite) as tmp:
        smears = crop_cells(inputs, tmp, config, reporter)
        separated_or_fail(smears)
        write_tables(smears, tmp)
        detection = None
        if truth is not None:
            detection = score_detection(detected(smears), truth)
            detection.update({"format": "fastall-detection", "boxes": str(boxes), "method": config.method})
            atomic_write_text(tmp / "detection.json", json.dumps(plain(detection), indent=2, allow_nan=False))
        summary = {
            "format": FORMAT,
            "fastall_version": __version__,
            "method": config.method,
            "margin": config.margin,
            "smears": len(smears),
            "cells": sum(s.cells for s in smears),
            "kinds": {k: sum(s.kind == k for s in smears) for k in sorted({s.kind for s in smears})},
            "warnings": reporter.warnings,
        }
        atomic_write_text(tmp / "index.html", cells_page(smears, summary, detection))
        reached("cells-summary")
        atomic_write_text(tmp / "cells.json", json.dumps(plain(summary), indent=2, allow_nan=False))
    return CellsResult(Path(out), smears, detection)


def detected(smears: list[Smear]) -> dict:
    """``{image key: (boxes, scores)}`` of every image the method read."""
    return {image_key(s.name): (s.found.boxes, s.found.scores) for s in smears if s.found is not None}


def cells_page(smears: list[Smear], summary: dict, detection: dict | None) -> str:
    overlays = [
        Overlay(
            s.path,
            s.name,
            f"{s.cells} cell{'s' if s.cells != 1 else ''}" + (f" ({s.note})" if s.note else ""),
            [
                {
                    "x0": int(b[0]),
                    "y0": int(b[1]),
                    "x1": int(b[2]),
                    "y1": int(b[3]),
                    "colour": CELL_COLOUR,
                    "title": f"{s.crops[k] if k < len(s.crops) else ''} score {s.found.scores[k]:.2f}",
                }
                for k, b in enumerate(s.found.boxes)
            ]
            if s.found is not None
            else [],
        )
        for s in smears
    ]
    tables = [
        PageTable(
            "Smears",
            ["smear", "kind", "cells", "note"],
            [[s.name, s.kind, s.cells, s.note] for s in smears],
            text=(0, 1, 3),
        )
    ]
    if detection is not None:
        rows = []
        for iou, m in detection["by_iou"].items():
            rows.append(
                [
                    f"IoU ≥ {iou}",
                    *(_with_ci(m[k]) for k in ("precision", "recall", "f1")),
                    m["tp"],
                    m["fp"],
                    m["fn"],
                ]
            )
        tables.append(
            PageTable(
                "Detection against the annotated boxes",
                ["match", "precision", "recall", "F1", "TP", "FP", "FN"],
                rows,
                note=f"{detection['images']} annotated images; {detection['ci']}",
            )
        )
    meta = [
        f"{summary['cells']} leukocytes in {summary['smears']} images · method {summary['method']} · "
        f"margin {summary['margin']} · fastall {summary['fastall_version']}"
    ]
    return render_page(
        "fastall cells",
        meta,
        overlays,
        tables,
        legend=[("leukocyte", CELL_COLOUR)],
        warnings=[w["text"] for w in summary["warnings"]],
    )


def _with_ci(m: dict) -> str:
    if m["value"] != m["value"]:
        return "n/a"
    ci = f" [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]" if m["ci"] else ""
    return f"{m['value']:.3f}{ci}"
