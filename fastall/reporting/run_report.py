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
from fastall.reporting import naming
from fastall.reporting.grids import correct_rows, error_rows, grid_figure, grid_legend, image_root
from fastall.reporting.html import Shown, render, run_tables, sweep_tables
from fastall.reporting.patient_text import patient_line
from fastall.reporting.saved_runs import RunFiles, positive_name, read_run_files
from fastall.reporting.tables import protocol_line
from fastall.system.notices import as_records
from fastall.system.procs import pid_alive

REPORT_DIR = "report"
HOW = {
    "roc": "each thin line is one validation fold, the thick line their mean with a ±1 std band; the dashed "
    "line is the held-out test set. Up and to the left is better; the diagonal is chance.",
    "pr": "precision against recall for the positive class, per fold, mean ± 1 std and test; the dotted line "
    "is the prevalence (a useless classifier). AP is the area under the step curve.",
    "confusion": "rows are the true class, columns the prediction; counts on the left, each row divided by "
    "its total on the right (the diagonal is each class's recall).",
    "curves": "loss per epoch for each fold (solid: training, dashed: validation), validation accuracy and "
    "the learning rate used; the dotted vertical line marks the epoch kept (early stopping). The training "
    "loss is measured as trained: with dropout, class weights and on augmented views, so it can sit above "
    "the validation loss (view 0, no dropout); ln 2 = 0.693 is chance for two classes.",
    "ovr": "each class against all others, pooled out-of-fold (solid) and test (dashed); the table above "
    "gives per-class precision, recall and F1, and macro and weighted AUC.",
    "calibration": "mean predicted probability against the observed fraction of positives in 10 bins; on the "
    "diagonal is perfectly calibrated. Lower Brier is better; the histogram shows where predictions fall.",
    "cells_correct": "the cells each class is called most confidently and correctly (out-of-fold and test); "
    "the label gives the probability of the predicted class and the patient.",
    "cells_errors": "the most confident mistakes: cells of the other class called positive (false "
    "positives) and positive cells called otherwise (false negatives), or each class's errors when there is "
    "no positive class. Look for artefacts, stain or segmentation problems.",
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
    run_dir: str | Path,
    data: str | Path | None = None,
    *,
    shown_as: str | Path | None = None,
    positive: str | None = None,
) -> Report:
    """Write ``RUN/report/`` from the run folder ``run_dir``. ``data``: where the original images are, if
    not where the cache recorded them. ``shown_as``: the run's path once published, when ``run_dir`` is a
    run still being written (shown on the page and returned). ``positive``: the class the figures score,
    for a run that names none (it must agree with a recorded one)."""
    run = read_run_files(run_dir)
    if positive is not None:
        _name_positive(run, positive)
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
        raise FastallError(f"{final}: cannot write the report: {err.strerror or err}") from err
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
    of = f"positive class {p.score_class}" if p is not None and p.positive else ""
    if p is not None and p.binary:
        if not p.positive:
            notes.append(
                f"no positive class was named: the ROC, PR and calibration curves plot {p.score_class}; "
                "re-run with --positive CLASS to name the disease class"
            )
        add(
            "roc",
            f"ROC curves ({of or p.score_class}): folds, mean ± 1 std, test",
            F.roc_figure(p, test, pooled),
        )
        add("pr", f"Precision-recall curves ({of or p.score_class})", F.pr_figure(p, test, pooled))
    elif p is not None:
        add("ovr", "One-vs-rest ROC and precision-recall curves per class", F.one_vs_rest_figure(p))
        notes.append(f"{len(p.class_names)} classes: calibration curves are made for two classes only")
    if p is not None:
        title = "Confusion matrices" + (" (the paper's Table IV)" if (m or {}).get("paper") else "")
        add("confusion", title, F.confusion_figure(p))
    if run.history:
        notes += curve_notes(run.history)
        add("curves", "Training curves", F.curves_figure(run.history))
    if p is not None and p.binary:
        add("calibration", "Calibration", F.calibration_figure(p, pooled, test))
    if p is not None:
        if root is None:
            notes.append(note)
        else:
            for name, title, rows in (
                ("cells_correct", "Example cells, most confident correct", correct_rows(p)),
                ("cells_errors", "Example cells, most confident errors (error analysis)", error_rows(p)),
            ):
                add(name, title, grid_figure(p, root, rows, title.split(", ", 1)[1].capitalize()), svg=False)
                if figs and figs[-1].id == name:
                    figs[-1].details = grid_legend(p, rows)
    html = render(
        title="fastall run report",
        run=str(shown),
        command=(m or {}).get("command"),
        metrics=m,
        tables=run_tables(m) if m else [],
        figures=figs,
        notes=notes,
        warnings=as_records((m or {}).get("warnings")),
        facts=run_facts(m) if m else [],
    )
    (out / "index.html").write_text(html, encoding="utf-8")
    return Report(out / "index.html", [s.id for s in figs], notes)


def _name_positive(run: RunFiles, positive: str) -> None:
    """``report --positive``: the figures and grids of a run without a recorded positive class score it."""
    recorded = positive_name(run.metrics)
    names = naming.class_names(run.metrics or {}) or (run.predictions.class_names if run.predictions else [])
    if positive not in names:
        raise FastallError(f"--positive {positive!r} is not a class of the run (classes: {', '.join(names)})")
    if recorded is not None and recorded != positive:
        raise FastallError(
            f"--positive {positive!r} disagrees with the run, whose positive class is {recorded!r} (its "
            "metrics are of that class); train again with --positive to change it"
        )
    if run.predictions is not None and len(names) == 2:
        run.predictions.positive = positive
    if recorded is None:
        run.notes.append(
            f"the figures score {positive} (report --positive); the tables come from metrics.json, made "
            f"without a positive class: run train-head --positive {positive} for its sensitivity and "
            "specificity"
        )


def run_facts(m: dict) -> list[tuple[str, str]]:
    """The lines above everything else: classes, the positive class, the verdict, the patient level."""
    facts = [
        ("Classes", ", ".join(naming.class_names(m))),
        ("Positive class", naming.positive_fact(m)),
    ]
    if m.get("verdict"):
        facts.append(("Head against the linear probe", m["verdict"]["text"]))
    elif m.get("baseline"):
        facts.append(("Head against the linear probe", protocol_line(m)))
    for name, pl in (m.get("patient_level") or {}).items():
        facts.append((f"Patient level ({name.replace('_', ' ')})", patient_line(pl)))
    if not m.get("patient_level"):
        why = (
            "more than two classes"
            if len(naming.class_names(m)) > 2
            else "no positive class named"
            if not positive_name(m)
            else "not recorded"
        )
        facts.append(("Patient level", f"not computed: {why}"))
    return facts


def curve_notes(history: dict) -> list[str]:
    """Why the training curves are flat or empty, when they are."""
    folds = history.get("folds") or []
    if folds and all(not h.get("train_loss") for h in folds):
        return ["training curves are empty: no fold head trained an epoch (each kept its starting point)"]
    if folds and all(h.get("best_epoch") == 0 for h in folds):
        return [
            "every fold kept epoch 0 (the starting linear probe): the curves show the epochs tried on the "
            "inner split, none of which was kept, so the head is the probe"
        ]
    return []


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
