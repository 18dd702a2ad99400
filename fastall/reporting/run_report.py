"""``RUN/report/``: the whole report of a run or sweep folder, remade from the folder alone (plus the original
images for the example-cell grids): ``index.html`` (self-contained) and ``figures/*.png|svg``.

What cannot be made (no metrics.json, an older run without per-epoch history, images not found) is left out
with a one-line note; everything else is still made. The folder is replaced whole: it is written beside
itself and renamed into place.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from fastall.errors import FastallError
from fastall.reporting import figures as F
from fastall.reporting.grids import correct_rows, error_rows, grid_figure, image_root
from fastall.reporting.html import Shown, render, run_tables, sweep_tables
from fastall.reporting.runfiles import RunFiles, load_run
from fastall.system.procs import pid_alive

REPORT_DIR = "report"
HOW = {
    "roc": "each thin line is one validation fold, the thick line their mean with a ±1 std band; the dashed "
    "line is the held-out test set. Up and to the left is better; the diagonal is chance.",
    "pr": "precision against recall for the positive class, per fold, mean ± 1 std and test; the dotted line "
    "is the prevalence (a useless classifier). AP is the area under the step curve.",
    "confusion": "rows are the true class, columns the prediction; counts on the left (the paper's Table "
    "IV), each row divided by its total on the right (diagonal = sensitivity / specificity).",
    "curves": "loss per epoch for each fold (solid: training, dashed: validation), validation accuracy and "
    "the learning rate used; the dotted vertical line marks the epoch kept (early stopping).",
    "calibration": "mean predicted probability against the observed fraction of positives in 10 bins; on the "
    "diagonal is perfectly calibrated. Lower Brier is better; the histogram shows where predictions fall.",
    "cells_correct": "the cells each class is called most confidently and correctly (out-of-fold and test); "
    "the label gives the probability of the predicted class and the patient.",
    "cells_errors": "the most confident mistakes: normal cells called leukaemic (false positives) and "
    "leukaemic cells called normal (false negatives). Look for artefacts, stain or segmentation problems.",
    "sweep_rank": "each bar is one configuration's mean metric over the folds with ±1 std; the top bar is "
    "the best. Overlapping bars are not reliably different.",
    "sweep_heatmap": "the best mean metric found at each pair of values of the two hyperparameters that vary "
    "most (other parameters at their best); empty cells were not tried.",
}


@dataclass
class Report:
    """What ``write_report`` made: the page, the figures in it, and the notes on what was left out."""

    path: Path
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def write_report(
    run_dir: str | Path, data: str | Path | None = None, *, shown_as: str | Path | None = None
) -> Report:
    """Write ``RUN/report/`` from the run folder ``run_dir``. ``data``: where the original images are, if
    not where the cache recorded them. ``shown_as``: the run's path once published, when ``run_dir`` is a
    run still being written (shown on the page and returned)."""
    run = load_run(run_dir)
    shown = Path(shown_as) if shown_as else run.folder.absolute()
    run.notes = [n.replace(str(run.folder), str(shown)) for n in run.notes]
    final = run.folder / REPORT_DIR
    _remove_stale(run.folder)
    tmp = run.folder / f"{REPORT_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "figures").mkdir(parents=True)
        report = _sweep(run, tmp, shown) if run.sweep else _run(run, tmp, data, shown)
        _replace(tmp, final)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FastallError(f"{final}: cannot write the report: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.path = shown / REPORT_DIR / "index.html"
    return report


def _remove_stale(folder: Path) -> None:
    """Half-written reports of processes that are gone (a crash between the writes and the rename)."""
    for stale in folder.glob(f"{REPORT_DIR}.*-*"):
        kind, _, pid = stale.name.removeprefix(f"{REPORT_DIR}.").partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _replace(tmp: Path, final: Path) -> None:
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _run(run: RunFiles, out: Path, data: str | Path | None, shown: Path) -> Report:
    notes = list(run.notes)
    m, p = run.metrics, run.predictions
    root, note = image_root(p, m, data) if p is not None else (None, "")
    folder = out / "figures"
    figs: list[Shown] = []

    def add(name: str, title: str, fig, svg: bool = True) -> None:
        if fig is not None:
            figs.append(Shown(name, title, F.save(fig, folder, name, svg), HOW[name], svg))

    pooled, test = (m or {}).get("pooled"), (m or {}).get("test")
    if p is not None and p.binary:
        add("roc", "ROC curves: folds, mean ± 1 std, test", F.roc_figure(p, test, pooled))
        add("pr", "Precision-recall curves", F.pr_figure(p, test, pooled))
    elif p is not None:
        notes.append(
            f"{len(p.class_names)} classes: ROC, PR and calibration curves are made for two classes only"
        )
    if p is not None:
        add("confusion", "Confusion matrices (the paper's Table IV)", F.confusion_figure(p))
    if run.history:
        add("curves", "Training curves (the paper's Fig. 1)", F.curves_figure(run.history))
    if p is not None and p.binary:
        add("calibration", "Calibration", F.calibration_figure(p, pooled, test))
    if p is not None:
        if root is None:
            notes.append(note)
        else:
            add(
                "cells_correct",
                "Example cells, most confident correct (the paper's Figs. 3 and 4)",
                grid_figure(p, root, correct_rows(p), "Most confident correct"),
                svg=False,
            )
            add(
                "cells_errors",
                "Example cells, most confident errors (error analysis)",
                grid_figure(p, root, error_rows(p), "Most confident errors"),
                svg=False,
            )
    html = render(
        title="fastall run report",
        run=str(shown),
        command=(m or {}).get("command"),
        metrics=m,
        tables=run_tables(m) if m else [],
        figures=figs,
        notes=notes,
    )
    (out / "index.html").write_text(html, encoding="utf-8")
    return Report(out / "index.html", [s.id for s in figs], notes)


def _sweep(run: RunFiles, out: Path, shown: Path) -> Report:
    s = run.sweep
    folder = out / "figures"
    figs = [
        Shown(
            "sweep_rank",
            "Ranked configurations",
            F.save(F.sweep_rank_figure(s), folder, "sweep_rank"),
            HOW["sweep_rank"],
        )
    ]
    notes = []
    heat = F.sweep_heatmap_figure(s)
    if heat is None:
        notes.append("fewer than two hyperparameters vary: no heatmap")
    else:
        figs.append(
            Shown(
                "sweep_heatmap",
                f"{s['metric']} over two hyperparameters",
                F.save(heat, folder, "sweep_heatmap"),
                HOW["sweep_heatmap"],
            )
        )
    metrics = {
        "fastall_version": s.get("fastall_version"),
        "cache": s.get("cache"),
        "device": s.get("device"),
        "precision": s.get("precision"),
        "config": {"folds": s.get("folds"), "test": s.get("test"), "seed": s.get("seed")},
    }
    html = render(
        title="fastall sweep report",
        run=str(shown),
        command=s.get("command"),
        metrics=metrics,
        tables=sweep_tables(s),
        figures=figs,
        notes=notes,
        extra={"best_command": (s.get("best") or {}).get("command")},
    )
    (out / "index.html").write_text(html, encoding="utf-8")
    return Report(out / "index.html", [x.id for x in figs], notes)
