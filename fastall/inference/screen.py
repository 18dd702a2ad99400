"""`fastall screen RUN SMEARS --out DIR`: leukocytes found, classified by the run's end-to-end model, counted.

Steps: the run's model is loaded as ``predict`` loads it (``--precision auto``: the one resolver's fastest
precision that agrees with fp32 on this device); the training images' cell scale is measured
(:mod:`fastall.inference.cell_scale`); every smear's leukocytes are cropped at that scale into
``DIR/cells/<smear-stem>/<smear-stem>_<k>.png`` (a single-cell image is classified whole); ``predict``'s own
batched path classifies the crops; figures per smear and per patient (:mod:`fastall.inference.screen_tables`)
go to ``cells.csv``, ``smears.csv``, ``patients.csv``, ``screen.json`` and ``index.html``. DIR appears
complete or not at all.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastall import __version__
from fastall.data.patients_file import read_patients
from fastall.data.smears import CropConfig, Smear, cell_rows, crop_cells, write_csv
from fastall.errors import FastallError
from fastall.inference.artifacts import load_for_inference, open_run
from fastall.inference.cell_scale import far_from_training, training_scale
from fastall.inference.cells import check_inputs, separated_or_fail
from fastall.inference.evaluate import run_positive
from fastall.inference.predict import predict_paths
from fastall.inference.screen_tables import fmt, patient_cut, summarise
from fastall.reporting.smear_html import Overlay, PageTable, class_colours, render_page
from fastall.system.events import Reporter, silent
from fastall.system.faults import reached
from fastall.system.files import atomic_write_text
from fastall.system.jsonable import plain
from fastall.system.runfolder import atomic_folder

FORMAT = "fastall-screen"
FIGURES = ("leukocytes", "positive", "fraction_positive", "ci_low", "ci_high", "mean_probability", "flag")


@dataclass
class ScreenConfig:
    """Everything `screen` takes besides RUN, SMEARS and DIR. ``margin`` None: crops at the training scale."""

    method: str = "stain"
    margin: float | None = None
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"
    batch_size: int = 32
    workers: int | None = None
    weights_path: str | None = None
    patients: str | None = None
    overwrite: bool = False


@dataclass
class ScreenResult:
    out: Path
    smears: list[Smear]
    cells: list[dict]
    smear_rows: list[dict]
    patient_rows: list[dict]
    summary: dict = field(default_factory=dict)


def screen(
    run: str | Path,
    inputs: list[str | Path],
    out: str | Path,
    config: ScreenConfig | None = None,
    reporter: Reporter | None = None,
) -> ScreenResult:
    """Detect, classify and count (module docstring)."""
    config = config or ScreenConfig()
    reporter = reporter or silent()
    check_inputs([*inputs, run], out)
    patients = read_patients(config.patients) if config.patients else None
    if Path(run).is_file():
        raise FastallError(
            f"{run}: screen needs a run folder, not a model file: the run's out-of-fold results choose the "
            "flag's cut and its training images the cell scale"
        )
    folder = open_run(run)
    model = load_for_inference(
        run,
        device=config.device,
        precision=config.precision,
        backend=config.backend,
        weights_path=config.weights_path,
    )
    positive = run_positive(folder.record)
    cut = patient_cut(run, positive)
    scale = training_scale(folder)
    crop = _crop_config(config, scale, model.image_size, reporter)
    start = time.perf_counter()
    with atomic_folder(out, overwrite=config.overwrite) as tmp:
        smears = crop_cells(inputs, tmp / "cells", crop, reporter)
        separated_or_fail(smears)
        detected = time.perf_counter()
        cells = _classify(model, smears, tmp, config, positive, reporter)
        classified = time.perf_counter()
        _scale_warning(smears, scale, reporter)
        smear_rows, patient_rows = _figures(smears, cells, patients, cut.get("cut"), reporter)
        summary = {
            "format": FORMAT,
            "fastall_version": __version__,
            "run": str(run),
            "precision": model.precision,
            "device": str(model.device),
            "class_names": list(model.class_names),
            "positive_class": positive,
            "cut": cut,
            "training_scale": scale,
            "crops": {"method": crop.method, "fill": crop.fill, "margin": crop.margin, "size": crop.size},
            "smears": len(smears),
            "cells": len(cells),
            "kinds": {k: sum(s.kind == k for s in smears) for k in sorted({s.kind for s in smears})},
            "seconds": {
                "detect": detected - start,
                "classify": classified - detected,
                "total": classified - start,
            },
        }
        _write(tmp, smears, cells, smear_rows, patient_rows, summary, reporter)
    reporter.info(
        f"{len(cells)} leukocytes in {len(smears)} images -> {out} ({summary['seconds']['total']:.1f} s)"
    )
    return ScreenResult(Path(out), smears, cells, smear_rows, patient_rows, summary)


def _crop_config(config: ScreenConfig, scale: dict, model_size: int, reporter: Reporter) -> CropConfig:
    """Crops where the cell fills the share of the image it fills in training, at the training image side
    or the model's input side if smaller (the model sees the same input either way, and a smaller crop is
    cheaper to write and read)."""
    if config.margin is not None:
        return CropConfig(config.method, margin=config.margin)
    if scale.get("fill") is None:
        reporter.warn(
            "cell-scale", f"training cell scale {scale['source']}: crops keep the default margin 0.15"
        )
        return CropConfig(config.method)
    return CropConfig(config.method, fill=scale["fill"], size=min(int(scale["image_px"]), model_size))


def _classify(
    model, smears: list[Smear], tmp: Path, config: ScreenConfig, positive: str | None, reporter: Reporter
) -> list[dict]:
    """One dict per crop: cells.csv's box columns, the predicted class and probabilities."""
    boxes = cell_rows(smears)
    if not boxes:
        return []
    root = tmp / "cells"
    paths = [root / row[1] for row in boxes]
    preds = predict_paths(
        model, paths, batch_size=config.batch_size, workers=config.workers, reporter=reporter
    )
    index = {Path(p).relative_to(root).as_posix(): k for k, p in enumerate(preds.paths)}
    pos = preds.class_names.index(positive) if positive in preds.class_names else None
    out = []
    for row in boxes:
        k = index.get(row[1])
        cell = dict(zip(("smear", "cell", "x0", "y0", "x1", "y1", "area", "score"), row, strict=True))
        cell["cell"] = f"cells/{row[1]}"
        if k is None:
            cell.update({"predicted_class": "", "called": None, "p": None})
        else:
            probs = preds.probs[k]
            cell["predicted_class"] = preds.class_names[int(np.argmax(probs))]
            cell.update({f"p_{c}": f"{float(v):.6g}" for c, v in zip(preds.class_names, probs, strict=True)})
            cell["called"] = None if pos is None else cell["predicted_class"] == positive
            cell["p"] = None if pos is None else float(probs[pos])
        out.append(cell)
    return out


def _scale_warning(smears: list[Smear], scale: dict, reporter: Reporter) -> None:
    far = [
        s.name
        for s in smears
        if s.kind == "smear"
        and s.found is not None
        and far_from_training([float(max(b[2] - b[0], b[3] - b[1])) for b in s.found.boxes], scale)
    ]
    if far:
        low, _, high = scale["cell_px"]
        reporter.warn(
            "cell-scale",
            f"{len(far)} smear(s) (first: {far[0]}) have cells far outside the training images' "
            f"{low:.0f}-{high:.0f} px: their crops are resized more than 2x, so the classifier sees another "
            "resolution than it was trained on",
        )


def _figures(
    smears: list[Smear], cells: list[dict], patients: dict | None, cut: float | None, reporter: Reporter
) -> tuple[list[dict], list[dict]]:
    by_smear: dict[str, list[dict]] = {s.name: [] for s in smears}
    for c in cells:
        by_smear[c["smear"]].append(c)
    unlisted = [s.name for s in smears if patients is not None and s.name not in patients]
    if unlisted:
        reporter.warn(
            "patients", f"{len(unlisted)} smear(s) not in --patients (first: {unlisted[0]}): own patient"
        )
    smear_rows, groups = [], {}
    for s in smears:
        patient = (patients or {}).get(s.name, s.name)
        row = {"smear": s.name, "patient": patient, "kind": s.kind, **summarise(by_smear[s.name], cut)}
        if s.kind in ("unreadable", "not separated"):
            row["leukocytes"] = None
        row["note"] = s.note
        smear_rows.append(row)
        if row["leukocytes"] is not None:
            groups.setdefault(patient, []).append(s.name)
    patient_rows = []
    for patient, names in groups.items():
        members = [c for n in names for c in by_smear[n]]
        patient_rows.append({"patient": patient, "smears": len(names), **summarise(members, cut)})
    if patients is None:
        reporter.info("no --patients: every smear is its own patient")
    return smear_rows, patient_rows


def _write(tmp: Path, smears, cells, smear_rows, patient_rows, summary: dict, reporter: Reporter) -> None:
    names = summary["class_names"]
    cell_cols = ["smear", "cell", "x0", "y0", "x1", "y1", "area", "score", "predicted_class"]
    cell_cols += [f"p_{c}" for c in names]
    write_csv(tmp / "cells.csv", cell_cols, [[c.get(k, "") for k in cell_cols] for c in cells])
    write_csv(
        tmp / "smears.csv", ["smear", "patient", "kind", *FIGURES, "note"], [_line(r) for r in smear_rows]
    )
    write_csv(tmp / "patients.csv", ["patient", "smears", *FIGURES], [_line(r) for r in patient_rows])
    reached("screen-tables")
    summary["warnings"] = reporter.warnings
    atomic_write_text(tmp / "index.html", _page(smears, cells, smear_rows, patient_rows, summary))
    atomic_write_text(tmp / "screen.json", json.dumps(plain(summary), indent=2, allow_nan=False))


def _line(row: dict) -> list:
    out = []
    for key, value in row.items():
        if key == "flag":
            value = int(value)
        elif isinstance(value, float):
            value = fmt(value)
        out.append("" if value is None else value)
    return out


def _page(smears, cells, smear_rows, patient_rows, summary: dict) -> str:
    colours = class_colours(summary["class_names"])
    boxes: dict[str, list[dict]] = {s.name: [] for s in smears}
    for c in cells:
        label = c["predicted_class"] or "unclassified"
        boxes[c["smear"]].append(
            {
                "x0": int(c["x0"]),
                "y0": int(c["y0"]),
                "x1": int(c["x1"]),
                "y1": int(c["y1"]),
                "colour": colours.get(label, "#777777"),
                "title": f"{c['cell']}: {label}" + (f" (p={c['p']:.2f})" if c["p"] is not None else ""),
            }
        )
    rows = {r["smear"]: r for r in smear_rows}
    overlays = [
        Overlay(
            s.path,
            s.name,
            f"{s.cells} leukocyte(s), {_frac(rows[s.name])}" + (f"; {s.note}" if s.note else ""),
            boxes[s.name],
        )
        for s in smears
    ]
    cut = summary["cut"]
    cut_line = (
        f"flag: fraction called {summary['positive_class']} ≥ {cut['cut']:.3f}, chosen by {cut['rule']}; "
        f"out of fold ({cut['patients']} patients) it flagged {cut['sensitivity']:.0%} of the positive "
        f"patients and spared {cut['specificity']:.0%} of the negative ones"
        if cut.get("cut") is not None
        else f"no flag: {cut['why']}"
    )
    meta = [
        f"{summary['cells']} leukocytes in {summary['smears']} images · run {summary['run']} · "
        f"{summary['precision']} on {summary['device']} · {summary['seconds']['total']:.1f} s · "
        f"fastall {summary['fastall_version']}",
        cut_line,
        f"cell scale: {summary['training_scale']['source']}",
        "Fractions carry Wilson 95% intervals. This is a research screen, not a diagnosis.",
    ]
    head = [
        "leukocytes",
        f"called {summary['positive_class'] or 'positive'}",
        "fraction",
        "95% CI",
        "mean p",
        "flag",
    ]
    tables = [
        PageTable(
            "Patients",
            ["patient", "smears", *head],
            [_cells(r, [r["patient"], r["smears"]]) for r in patient_rows],
            [r["flag"] for r in patient_rows],
            css="patients",
        ),
        PageTable(
            "Smears",
            ["smear", "patient", "kind", *head, "note"],
            [[*_cells(r, [r["smear"], r["patient"], r["kind"]]), r["note"]] for r in smear_rows],
            [r["flag"] for r in smear_rows],
            text=(0, 1, 2, 9),
            css="smears",
        ),
    ]
    legend = [(c, colours[c]) for c in summary["class_names"]]
    return render_page(
        "fastall screen",
        meta,
        overlays,
        tables,
        legend=legend,
        warnings=[w["text"] for w in summary["warnings"]],
    )


def _frac(row: dict) -> str:
    f = row["fraction_positive"]
    return "no fraction" if f != f else f"{f:.0%} called positive"


def _cells(r: dict, first: list) -> list:
    ci = "" if r["ci_low"] != r["ci_low"] else f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
    return [
        *first,
        "" if r["leukocytes"] is None else r["leukocytes"],
        "" if r["positive"] is None else r["positive"],
        fmt(r["fraction_positive"], 3),
        ci,
        fmt(r["mean_probability"], 3),
        "yes" if r["flag"] else "",
    ]
