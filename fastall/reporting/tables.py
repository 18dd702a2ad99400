"""Rich tables for train-head runs and sweeps: the leakage audit, folds with mean ± std and peak, the test
set, each beside the paper's Tables II and III, the clinical metrics with their patient-level 95% CIs, and a
sweep's ranking. The rows are plain strings so that the HTML report shows the same numbers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fastall.reporting import naming
from fastall.reporting.paper import PAPER_CV, PAPER_TEST
from fastall.reporting.patient_text import patient_line
from fastall.system.notices import as_records


def fmt(value: Any, percent: bool, std: Any = None) -> str:
    """``96.63±0.80`` (percent) or ``0.950±0.010``; ``n/a`` for a missing or undefined value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    text = f"{100 * value:.2f}" if percent else f"{value:.3f}"
    if isinstance(std, float) and math.isfinite(std):
        text += f"±{100 * std:.2f}" if percent else f"±{std:.3f}"
    return text


def fmt_ci(m: dict | None, key: str, percent: bool, sep: str = " ") -> str:
    """``95.12 [93.40, 96.55]`` from a metrics block with ``"ci"``; ``unreliable`` under 10 patients."""
    if not m:
        return ""
    text = fmt(m.get(key), percent)
    ci = m.get("ci")
    if not ci or text == "n/a":
        return text
    if not ci.get("reliable"):
        return f"{text}{sep}[unreliable: {ci.get('patients', '?')} patients]"
    interval = (ci.get("intervals") or {}).get(key)
    if not interval:
        return f"{text}{sep}[n/a]"
    if interval[0] == interval[1]:
        return f"{text}{sep}[degenerate: every resample gives {fmt(interval[0], percent)}]"
    return f"{text}{sep}[{fmt(interval[0], percent)}, {fmt(interval[1], percent)}]"


def clinical_rows(m: dict, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """The summary with CIs: per metric, CV mean ± std, pooled out-of-fold, test (final head, fold ensemble)
    with 95% CIs, and, for a C-NMC run, the paper's Tables II and III (``compact``: short labels, the CI on
    its own line, no paper columns: for a terminal)."""
    compact_paper = compact or not shows_paper(m)
    s, pooled, test = m.get("summary") or {}, m.get("pooled"), m.get("test") or {}
    header = ["Metric", "CV mean±std", "Pooled out-of-fold [95% CI]"]
    blocks = [("summary", s), ("pooled", pooled)]
    for key, name in (("final", "Test, final head [95% CI]"), ("ensemble", "Test, fold ensemble [95% CI]")):
        if key in test:
            header.append(name)
            blocks.append(("test", test[key]))
    header += [] if compact_paper else ["Paper Table II", "Paper Table III"]
    rows = []
    for label, short, key, pct in naming.clinical_rows(m):
        row = [short if compact else label]
        for kind, block in blocks:
            if kind == "summary":
                row.append(fmt(block.get(key), pct, block.get(f"{key}_std")))
            else:
                row.append(fmt_ci(block, key, pct, "\n" if compact else " ") or "n/a")
        if compact_paper:
            rows.append(row)
            continue
        cv_std = PAPER_CV.get(f"{key}_std")
        row += [
            fmt(PAPER_CV.get(key), pct, cv_std) if key in PAPER_CV else "",
            fmt(PAPER_TEST.get(key), pct) if key in PAPER_TEST else "",
        ]
        rows.append(row)
    return header, rows


def param_cells(params: dict, names: list[str]) -> list[str]:
    """Hyperparameter values as a sweep table shows them (floats to 3 significant digits)."""
    return [f"{params[n]:.3g}" if isinstance(params[n], float) else str(params[n]) for n in names]


def sweep_row_cells(s: dict, metric: str, params: list[str]) -> list[str]:
    """A sweep table's cells after the rank: ``params`` (already formatted), the ranking metric with its std,
    accuracy, F1, AUC and the validation loss of a summary ``s`` (a configuration's or the probe's)."""
    return [
        *params,
        fmt(s.get(metric), metric == "accuracy", s.get(f"{metric}_std")),
        fmt(s.get("accuracy"), True),
        fmt(s.get("f1"), False),
        fmt(s.get("auc"), False),
        fmt(s.get("val_loss"), False) if "val_loss" in s else "",
    ]


def ci_note(m: dict) -> str:
    """How the intervals were made, in one line."""
    ci = (m.get("pooled") or {}).get("ci") or ((m.get("test") or {}).get("final") or {}).get("ci")
    if not ci:
        return "no confidence intervals in this metrics.json (made by an older fastall)"
    return (
        f"95% CIs: patient-level bootstrap ({ci['resamples']} resamples of patients with replacement, "
        f"seed {ci['seed']}, percentile); under 10 patients an interval is marked unreliable"
    )


def clinical_table(m: dict) -> Table:
    header, rows = clinical_rows(m, compact=True)
    table = Table(title=f"Clinical metrics ({ci_note(m)})", title_justify="left")
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def _row(m: dict, run: dict, with_std: bool = False) -> list[str]:
    cols = naming.columns(run)
    return [fmt(m.get(key), pct, m.get(f"{key}_std") if with_std else None) for _, key, pct in cols]


def _table(run: dict, title: str, first: str, *extra: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(first, no_wrap=True)
    for col in (*extra, *(c for c, _, _ in naming.columns(run))):
        table.add_column(col, justify="right", no_wrap=True)
    return table


def audit_table(audit: list[dict], test_mode: str, run: dict | None = None) -> Table:
    table = Table(title=f"Leakage audit: patient-level splits (test: {test_mode})", title_justify="left")
    for col in ("Fold", "Train img/pat", "Val img/pat", "Test img/pat", "Shared patients"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in audit:
        cell = naming.shared_cell(run or {}, r["shared_patients"])
        table.add_row(
            str(r["fold"]),
            f"{r['train_images']}/{r['train_patients']}",
            f"{r['val_images']}/{r['val_patients']}",
            f"{r['test_images']}/{r['test_patients']}",
            f"[green]{cell}[/]" if cell.endswith("✓") else f"[yellow]{cell}[/]",
        )
    return table


def folds_table(m: dict) -> Table:
    table = _table(m, "Patient-level cross-validation (validation on view 0)", "Fold", "Val img", "Epoch")
    for f in m["folds"]:
        table.add_row(str(f["fold"]), str(f["val_images"]), str(f["best_epoch"]), *_row(f, m))
    s = m["summary"]
    table.add_section()
    table.add_row("mean±std", "", "", *_row(s, m, with_std=True), style="bold")
    table.add_row(f"peak (fold {s['peak_fold']})", "", "", *_row(m["folds"][s["peak_fold"]], m))
    if "tta" in s:
        table.add_row("TTA mean±std", "", "", *_row(s["tta"], m, with_std=True))
    probe = m.get("probe")
    if probe:
        table.add_row(
            "linear probe (to beat)", "", "", *_row(probe["summary"], m, with_std=True), style="cyan"
        )
    if shows_paper(m):
        table.add_section()
        table.add_row("paper Table II", "", "", *_row(PAPER_CV, m, with_std=True), style="dim")
        table.add_row("paper peak", "", "", fmt(PAPER_CV["peak_accuracy"], True), "", "", "", "", style="dim")
    return table


def shows_paper(m: dict) -> bool:
    """The paper's rows belong beside a C-NMC run only (older runs: when their classes are C-NMC's)."""
    if "dataset" in m:
        return bool(m.get("paper"))
    return naming.class_names(m) == ["hem", "all"]


def per_class_rows(block: dict | None, m: dict) -> list[list[str]]:
    """Per class: precision, recall, F1, support and one-vs-rest AUC of a metrics block."""
    rows = []
    for name, c in zip(naming.class_names(m), (block or {}).get("per_class") or [], strict=False):
        rows.append(
            [
                name,
                fmt(c.get("precision"), True),
                fmt(c.get("recall"), True),
                fmt(c.get("f1"), False),
                str(c.get("support", "")),
                fmt(c.get("auc"), False),
            ]
        )
    return rows


PER_CLASS_HEADER = ["Class", "Precision %", "Recall %", "F1", "Support", "AUC vs rest"]


def per_class_table(m: dict) -> Table | None:
    rows = per_class_rows(m.get("pooled"), m)
    if not rows:
        return None
    table = Table(title="Per class, pooled out-of-fold", title_justify="left")
    for i, col in enumerate(PER_CLASS_HEADER):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def test_table(m: dict) -> Table | None:
    t = m.get("test")
    if not t:
        return None
    table = _table(m, f"Test set ({t['images']} images, {m['splits']['test_patients']} patients)", "Model")
    names = {
        "final": f"final head ({m['final_head']['epochs']} ep)",
        "ensemble": "fold ensemble",
        "final_tta": "final head + TTA",
        "ensemble_tta": "fold ensemble + TTA",
    }
    for key, name in names.items():
        if key in t:
            table.add_row(name, *_row(t[key], m))
    probe = (m.get("probe") or {}).get("test")
    if probe:
        table.add_row("linear probe (to beat)", *_row(probe, m), style="cyan")
    if shows_paper(m):
        table.add_section()
        table.add_row("paper Table III", *_row(PAPER_TEST, m), style="dim")
    return table


def protocol_line(m: dict) -> str:
    """The protocol and the number to beat, in one line (older runs: the paper's protocol)."""
    p = m.get("protocol") or {"preset": None, "train_views": "augmented", "selection": "fold"}
    where = (
        "the reported fold (optimistic)"
        if p["selection"] == "fold"
        else "an inner split of the training patients"
    )
    line = f"protocol: preset {p.get('preset') or 'none'}, training views {p['train_views']}, "
    line += f"selection on {where}"
    if p.get("tune"):
        line += f", tuned over {p['tune']!r}"
    ft = m.get("finetune")
    if ft:  # a finetune run: the backbone's stage after the cut trained with the head
        line += (
            f"; fine-tuned {','.join(ft['trained'])} from {ft['maps']} maps (stage lr {ft['stage_lr']:g}, "
            f"head lr {ft['head_lr']:g}, BatchNorm statistics {ft['bn']})"
        )
    b = m.get("baseline")
    if m.get("verdict"):
        line += ". " + m["verdict"]["text"]
    elif b and b.get("head_minus_probe_cv_accuracy") is not None:
        gap = b["head_minus_probe_cv_accuracy"]
        verdict = "beats" if gap > 0.0005 else "is within 0.01 of" if gap >= -0.01 else "LOSES TO"
        line += f". Head {verdict} the linear probe: CV accuracy {gap:+.3f} ({b['cv_accuracy']:.3f})"
    return line


def kept_epochs(m: dict) -> str:
    """The epochs the heads kept: per fold and the final head's."""
    folds = ", ".join(str(f.get("best_epoch")) for f in m.get("folds") or [])
    return (
        f"kept epochs: folds {folds or 'n/a'}; final head {(m.get('final_head') or {}).get('epochs', 'n/a')}"
    )


def print_run(m: dict, out: Path, console: Console, report: Any = None) -> None:
    """The run's tables, its one-line summary, its warnings (the same list as metrics.json and the report)
    and, if one was made, the report's notes and path."""
    cfg = m["config"]
    console.print(f"positive class: {naming.positive_fact(m)}", highlight=False, soft_wrap=True)
    console.print(audit_table(m["splits"]["audit"], m["splits"]["test_mode"], m))
    console.print(folds_table(m))
    table = test_table(m)
    if table is not None:
        console.print(table)
    if "pooled" in m:
        console.print(clinical_table(m))
    if len(naming.class_names(m)) > 2:
        table = per_class_table(m)
        if table is not None:
            console.print(table)
    secs = m.get("timings", {}).get("train_s")
    took = f" in {secs:.1f} s" if secs is not None else ""
    console.print(
        f"{len(m['folds'])} folds + final head trained{took} on {m['device']} ({m['precision']}): "
        f"lr {cfg['lr']:g}, batch {cfg['batch_size']}, up to {cfg['epochs']} epochs"
        f"{', at least ' + str(cfg['min_steps']) + ' steps' if cfg.get('min_steps') else ''} "
        f"({kept_epochs(m)}), "
        f"dropout {cfg['dropout']:g}, standardize {'on' if cfg['standardize'] else 'off'}. "
        f"Outputs in {out}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(protocol_line(m), highlight=False, soft_wrap=True)
    for name, pl in (m.get("patient_level") or {}).items():
        console.print(f"patient level ({name.replace('_', ' ')}): {patient_line(pl)}", highlight=False)
    warnings = as_records(m.get("warnings"))
    if warnings:
        console.print(f"[yellow]{len(warnings)} warning(s)[/] (also in metrics.json and the report):")
    for w in warnings:
        code = escape(f"[{w['code']}]")
        console.print(f"[yellow]warning[/] {code}: {escape(w['text'])}", highlight=False, soft_wrap=True)
    for note in getattr(report, "notes", []):
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    if report is not None:
        console.print(f"Report: {report.path}", highlight=False, soft_wrap=True)


def print_sweep(r: dict, out: Path, console: Console, report: Any = None, top: int = 20) -> None:
    """A sweep's ranked table (mean ± std over folds, results.json's content ``r``) and the train-head command
    of the best configuration."""
    metric, varying = r["metric"], r["varying"] or ["lr"]
    table = Table(
        title=f"Sweep: {len(r['configs'])} configurations × {r['folds']} patient-level folds, "
        f"ranked by {metric}",
        title_justify="left",
    )
    for col in ("#", *varying, f"{metric} mean±std", "Acc %", "F1", "AUC", "val loss"):
        table.add_column(col, justify="right", no_wrap=True)
    probe = (r.get("probe") or {}).get("summary")
    if probe:
        table.add_row("probe", *sweep_row_cells(probe, metric, ["" for _ in varying]), style="cyan")
        table.add_section()
    for row in r["configs"][:top]:
        rank = str(row["rank"]) + (" diverged" if row.get("diverged") else "")
        table.add_row(rank, *sweep_row_cells(row["summary"], metric, param_cells(row["params"], varying)))
    console.print(table)
    if len(r["configs"]) > top:
        console.print(f"... {len(r['configs']) - top} more in {out / 'results.csv'}")
    t = r["timings"]
    optimistic = (r.get("protocol") or {}).get("optimistic", True)
    console.print(
        f"{len(r['configs'])} configurations in {t['train_s']:.1f} s "
        f"({t['configs_per_s']:.2f}/s) on "
        f"{r['device']} ({r['precision']}), preset {r.get('preset') or 'paper'}"
        f"{' (selection on the reported fold: optimistic)' if optimistic else ''}"
        f"; the probe row is the linear probe on the same folds; results in {out}",
        highlight=False,
        soft_wrap=True,
    )
    if r.get("probe_note"):
        console.print(f"[yellow]warning:[/] {r['probe_note']}", highlight=False, soft_wrap=True)
    console.print("Best configuration, as a train-head run:")
    console.print(r["best"]["command"], soft_wrap=True, highlight=False, markup=False)
    if report is not None:
        console.print(f"Report: {report.path}", highlight=False, soft_wrap=True)
