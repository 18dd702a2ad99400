"""The report page: one self-contained HTML file (figures embedded as base64 PNG, no network, printable),
rendered by Jinja2 from the package's templates."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastall import __version__
from fastall.reporting import naming
from fastall.reporting.choice_table import choice_table
from fastall.reporting.paper import PAPER_CV, PAPER_TEST
from fastall.reporting.provenance import provenance_rows
from fastall.reporting.tables import (
    PER_CLASS_HEADER,
    ci_note,
    clinical_rows,
    fmt,
    kept_epochs,
    param_cells,
    per_class_rows,
    shows_paper,
    sweep_row_cells,
)


@dataclass
class Shown:
    """One figure on the page: its PNG (embedded), its SVG beside it if any, and how to read it."""

    id: str
    title: str
    png: Path
    how: str
    svg: bool = True
    details: list[str] = field(default_factory=list)

    @property
    def src(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png.read_bytes()).decode("ascii")


@dataclass
class Table:
    id: str
    title: str
    header: list[str]
    rows: list[list[str]]
    emphasis: tuple[int, ...] = ()
    dim: tuple[int, ...] = ()
    note: str = ""
    nav: str = ""


def _cells(m: dict, columns, with_std: bool = False) -> list[str]:
    return [fmt(m.get(key), pct, m.get(f"{key}_std") if with_std else None) for _, key, pct in columns]


def run_tables(m: dict) -> list[Table]:
    """The leakage audit, the fold table (beside Table II for C-NMC), the test table (beside Table III), the
    per-class table (more than two classes), the summary with CIs and the clinical metrics per fold."""
    tables = []
    cols = naming.columns(m)
    paper = shows_paper(m)
    splits = m.get("splits") or {}
    if splits.get("audit"):
        rows = [
            [
                str(r["fold"]),
                f"{r['train_images']}/{r['train_patients']}",
                f"{r['val_images']}/{r['val_patients']}",
                f"{r['test_images']}/{r['test_patients']}",
                naming.shared_cell(m, r["shared_patients"]),
            ]
            for r in splits["audit"]
        ]
        header = ["Fold", "Train img/pat", "Val img/pat", "Test img/pat", "Shared patients"]
        title = f"Leakage audit: patient-level splits (test: {splits.get('test_mode', '?')})"
        note = (
            ""
            if naming.groups_checkable(m)
            else "Images without a patient group are each their own group: whether one patient's cells sit "
            "on both sides of a split cannot be checked."
        )
        tables.append(Table("audit", title, header, rows, note=note, nav="Leakage audit"))
    folds, s = m.get("folds") or [], m.get("summary") or {}
    if folds and s:
        header = ["Fold", "Val img", "Epoch", *(c for c, _, _ in cols)]
        rows = [[str(f["fold"]), str(f["val_images"]), str(f["best_epoch"]), *_cells(f, cols)] for f in folds]
        peak = folds[s.get("peak_fold", 0)]
        rows += [
            ["mean±std", "", "", *_cells(s, cols, True)],
            [f"peak (fold {s.get('peak_fold', 0)})", "", "", *_cells(peak, cols)],
        ]
        probe = (m.get("probe") or {}).get("summary")
        if probe:
            rows.append(["linear probe (to beat)", "", "", *_cells(probe, cols, True)])
        n, k = len(folds), len(rows)
        if paper:
            rows += [
                ["paper Table II", "", "", *_cells(PAPER_CV, cols, True)],
                ["paper peak", "", "", fmt(PAPER_CV["peak_accuracy"], True), "", "", "", ""],
            ]
        protocol = m.get("protocol") or {}
        where = "inner split" if protocol.get("selection") == "inner" else "the reported fold, optimistic"
        title = (
            f"Patient-level cross-validation (validation on view 0; selection on {where}), beside the "
            "linear probe" + (" and the paper's Table II" if paper else "")
        )
        dim = (k, k + 1) if paper else ()
        tables.append(
            Table("folds", title, header, rows, emphasis=(n,), dim=dim, note=kept_epochs(m), nav="Folds")
        )
    test = m.get("test")
    if test:
        names = {"final": "final head", "ensemble": "fold ensemble", "final_tta": "final head + TTA"}
        names["ensemble_tta"] = "fold ensemble + TTA"
        rows = [[name, *_cells(test[key], cols)] for key, name in names.items() if key in test]
        if (m.get("probe") or {}).get("test"):
            rows.append(["linear probe (to beat)", *_cells(m["probe"]["test"], cols)])
        if paper:
            rows.append(["paper Table III", *_cells(PAPER_TEST, cols)])
        patients = splits.get("test_patients", "?")
        title = f"Test set ({test.get('images', '?')} images, {patients} patients)"
        title += ", beside the paper's Table III" if paper else ""
        header = ["Model", *(c for c, _, _ in cols)]
        dim = (len(rows) - 1,) if paper else ()
        tables.append(Table("test", title, header, rows, dim=dim, nav="Test set"))
    if len(naming.class_names(m)) > 2:
        for key, where in (("pooled", "pooled out-of-fold"), ("test", "test set, final head")):
            block = m.get("pooled") if key == "pooled" else (m.get("test") or {}).get("final")
            rows = per_class_rows(block, m)
            if rows:
                title = f"Per class, {where} (one class against the rest)"
                tables.append(
                    Table(f"per-class-{key}", title, PER_CLASS_HEADER, rows, nav=f"Per class ({key})")
                )
    if s:
        header, rows = clinical_rows(m)
        title = "Summary with 95% confidence intervals"
        tables.append(Table("summary", title, header, rows, note=ci_note(m), nav="Summary with CIs"))
    if folds and any("balanced_accuracy" in f for f in folds):
        clinical = [(short, key, pct) for _, short, key, pct in naming.clinical_rows(m)]
        clinical = [c for c in clinical if c[1] not in ("accuracy", "recall", "precision", "f1", "auc")]
        header = ["Fold", *(c for c, _, _ in clinical)]
        rows = [[str(f["fold"]), *_cells(f, clinical)] for f in folds]
        rows.append(["mean±std", *_cells(s, clinical, True)])
        title = "Clinical metrics per fold"
        tables.append(Table("clinical-folds", title, header, rows, emphasis=(len(folds),), nav="Per fold"))
    if m.get("model_choice"):
        tables.append(choice_table(m["model_choice"]))
    return tables


def sweep_tables(sweep: dict, top: int = 30) -> list[Table]:
    metric, varying = sweep["metric"], sweep.get("varying") or []
    header = ["#", *varying, f"{metric} mean±std", "Acc %", "F1", "AUC", "val loss"]
    rows = []
    probe = (sweep.get("probe") or {}).get("summary")
    if probe:
        rows.append(["linear probe (to beat)", *sweep_row_cells(probe, metric, ["" for _ in varying])])
    for r in sweep["configs"][:top]:
        rows.append(
            [str(r["rank"]), *sweep_row_cells(r["summary"], metric, param_cells(r["params"], varying))]
        )
    title = (
        f"Sweep: {len(sweep['configs'])} configurations × {sweep.get('folds', '?')} folds, ranked by "
        f"{metric}, preset {sweep.get('preset') or 'paper'}"
    )
    more = len(sweep["configs"]) - top
    note = " ".join(
        n for n in (sweep.get("probe_note"), f"{more} more in results.csv" if more > 0 else "") if n
    )
    return [Table("summary", title, header, rows, note=note, nav="Ranked configurations")]


def render(
    *,
    title: str,
    run: str,
    command: str | None,
    metrics: dict | None,
    tables: list[Table],
    figures: list[Shown],
    notes: list[str],
    extra: dict | None = None,
    warnings: list[dict] | None = None,
    facts: list[tuple[str, str]] | None = None,
) -> str:
    """The page as one HTML string: ``warnings`` (``{"code", "text"}``) in a box at the top, then ``facts``
    (the positive class, the verdict), the notes, provenance, tables and figures."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("fastall.reporting", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(
        title=title,
        run=run,
        command=command,
        provenance=provenance_rows(metrics) if metrics else [],
        tables=tables,
        figures=figures,
        notes=notes,
        extra=extra or {},
        warnings=warnings or [],
        facts=facts or [],
        version=__version__,
        made=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
