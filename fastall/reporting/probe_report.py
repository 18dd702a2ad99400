"""``PROBE/report/index.html``: the page of a `fastall probe` folder, made from probe.json and map.csv alone:
the protocols with their intervals, the chosen C per fold, label efficiency, the batch-effect score and the
embedding map."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from fastall.errors import FastallError
from fastall.reporting import probe_figures as PF
from fastall.reporting.figures import save
from fastall.reporting.html import Shown, Table, render
from fastall.reporting.run_report import REPORT_DIR, Report
from fastall.reporting.tables import fmt, fmt_ci

HOW = {
    "protocols": "each dot is a protocol's accuracy over all out-of-fold predictions; the line is its 95% "
    "patient-bootstrap interval. linear: C chosen by inner CV; linear_fixed_c: the fixed-C reference; knnK: "
    "cosine kNN with K neighbours (plain or temperature-weighted vote); mlp: the default train-head.",
    "efficiency": "validation accuracy when only a few labelled patients per class train the probe (mean "
    "over folds and draws; the band spans the draws). The legend says where a curve first reaches 95% of its "
    "full-data accuracy.",
    "batch": "how many of each image's nearest neighbours come from its own patient, and how many share its "
    "class, each beside the share a random pick would have. Far above chance for the patient: the features "
    "carry the patient (stain, slide), and a model can use it as a shortcut.",
    "map": "a 2-D map of view 0, coloured by class, by patient and by fold. Islands of one patient mean the "
    "features cluster by patient rather than by class.",
}


def _rows(protocols: dict) -> list[list[str]]:
    out = []
    for name, s in protocols.items():
        pooled, test = s.get("pooled"), s.get("test")
        out.append(
            [
                name,
                fmt(s["summary"].get("accuracy"), True, s["summary"].get("accuracy_std")),
                fmt_ci(pooled, "accuracy", True),
                fmt_ci(pooled, "balanced_accuracy", True),
                fmt_ci(pooled, "f1_weighted", False),
                fmt_ci(pooled, "auc", False),
                _log_loss(pooled),
                fmt((test or {}).get("accuracy"), True),
            ]
        )
    return out


def _log_loss(pooled: dict | None) -> str:
    if not pooled:
        return ""
    ci = (pooled.get("ci") or {}).get("log_loss")
    text = fmt(pooled.get("log_loss"), False)
    return f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and text != "n/a" else text


def tables(rec: dict) -> list[Table]:
    """Protocols, the linear probe's C per fold, label efficiency and the batch-effect score."""
    header = ["Protocol", "CV acc % (mean±std)", "Pooled acc % [95% CI]", "Bal. acc %", "wF1", "AUC",
              "Log loss", "Test acc %"]  # fmt: skip
    out = [Table("protocols", "Protocols on the same patient-level folds", header, _rows(rec["protocols"]),
                 note="95% CIs: patient bootstrap (1,000 resamples of patients, percentile)")]  # fmt: skip
    lin = rec.get("linear") or {}
    c_rows = [[str(i), f"{c:.3g}", str(n)] for i, (c, n) in enumerate(zip(lin.get("chosen_c", []),
              lin.get("inner_folds", []), strict=False))]  # fmt: skip
    out.append(Table("linear-c", "Linear probe: C chosen per fold", ["Fold", "C", "Inner folds"], c_rows,
                     note=lin.get("selection", "")))  # fmt: skip
    eff = rec.get("label_efficiency")
    if eff:
        curves = eff["curves"]
        sizes = [str(p["size"]) for p in next(iter(curves.values()))["points"]]
        rows = [[name] + [fmt(p["accuracy"], True) for p in c["points"]] + [str(c["reach_95"])]
                for name, c in curves.items()]  # fmt: skip
        out.append(Table("efficiency", f"Label efficiency ({eff.get('unit', '')})",
                         ["Protocol", *sizes, "95% of full at"], rows,
                         note=f"{eff['draws']} seeded draws per size; linear C = {eff['c']:g}"))  # fmt: skip
    be = rec.get("batch_effect")
    if be:
        pid = be.get("patient_identification") or {}
        rows = [
            ["same patient", fmt(be["same_patient_share"], True), fmt(be["same_patient_chance"], True),
             f"{fmt(be['same_patient_excess'], True)} [{100 * be['same_patient_excess_ci'][0]:.1f}, "
             f"{100 * be['same_patient_excess_ci'][1]:.1f}]"],
            ["same class", fmt(be["same_class_share"], True), fmt(be["same_class_chance"], True),
             fmt(be["same_class_excess"], True)],
        ]  # fmt: skip
        if pid:
            rows.append(["which patient? (accuracy)", fmt(pid["accuracy"], True),
                         f"{fmt(pid['chance_uniform'], True)} / {fmt(pid['chance_knowing_class'], True)}",
                         ""])  # fmt: skip
        said = [be["note"]] if be.get("note") else []
        said += [be["ci"]] + ([pid["method"] + ", chance: uniform / knowing the class"] if pid else [])
        out.append(Table("batch-effect", f"Batch-effect score ({be['k']} nearest neighbours)",
                         ["", "Observed %", "Chance %", "Excess % [95% CI]"], rows,
                         note="; ".join(said)))  # fmt: skip
    return out


def write_probe_report(folder: str | Path, *, shown_as: str | Path | None = None) -> Report:
    """Write ``folder/report/`` from ``folder/probe.json`` (and ``map.csv`` when there)."""
    folder = Path(folder)
    try:
        rec = json.loads((folder / "probe.json").read_text())
    except (OSError, ValueError) as err:
        raise FastallError(f"{folder}: no readable probe.json ({err})") from err
    out = folder / REPORT_DIR
    shutil.rmtree(out, ignore_errors=True)
    figs: list[Shown] = []
    notes = list(rec.get("warnings") or [])

    def add(name: str, title: str, fig) -> None:
        figs.append(Shown(name, title, save(fig, out / "figures", name), HOW[name]))

    add(
        "protocols",
        "Every protocol: pooled accuracy with its interval",
        PF.protocols_figure(rec["protocols"]),
    )
    if rec.get("label_efficiency"):
        add("efficiency", "Label efficiency", PF.efficiency_figure(rec["label_efficiency"]))
    if rec.get("batch_effect"):
        add("batch", "Batch-effect score", PF.batch_figure(rec["batch_effect"]))
    if (folder / "map.csv").is_file() and rec.get("embedding"):
        with open(folder / "map.csv", newline="") as fh:
            points = list(csv.DictReader(fh))
        method = rec["embedding"]["method"]
        if method != "umap":
            notes.append(
                f"the map is {method}: install the umap extra (pip install 'fastall[umap]') for UMAP"
            )
        add("map", f"Embedding map ({method})", PF.map_figure(points, method))
    shown = Path(shown_as) if shown_as else folder.absolute()
    html = render(title="fastall probe report", run=str(shown), command=rec.get("command"),
                  metrics={"cache": rec.get("cache"), "config": rec.get("options"),
                           "device": (rec.get("options") or {}).get("device")},
                  tables=tables(rec), figures=figs, notes=notes)  # fmt: skip
    (out / "index.html").write_text(html, encoding="utf-8")
    return Report(shown / REPORT_DIR / "index.html", [f.id for f in figs], notes)
