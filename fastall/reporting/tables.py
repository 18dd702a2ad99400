"""Rich tables for train-head runs: the leakage audit, folds with mean ± std and peak, and the test set,
each beside the paper's Tables II and III."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fastall.training.metrics import PAPER_CV, PAPER_TEST

COLUMNS = (
    ("Acc %", "accuracy", True),
    ("Prec %", "precision", True),
    ("Rec %", "recall", True),
    ("F1", "f1", False),
    ("AUC", "auc", False),
)


def fmt(value: Any, percent: bool, std: Any = None) -> str:
    """``96.63±0.80`` (percent) or ``0.950±0.010``; ``n/a`` for a missing or undefined value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    text = f"{100 * value:.2f}" if percent else f"{value:.3f}"
    if isinstance(std, float) and math.isfinite(std):
        text += f"±{100 * std:.2f}" if percent else f"±{std:.3f}"
    return text


def _row(m: dict, with_std: bool = False) -> list[str]:
    return [fmt(m.get(key), pct, m.get(f"{key}_std") if with_std else None) for _, key, pct in COLUMNS]


def _table(title: str, first: str, *extra: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(first, no_wrap=True)
    for col in (*extra, *(c for c, _, _ in COLUMNS)):
        table.add_column(col, justify="right", no_wrap=True)
    return table


def audit_table(audit: list[dict], test_mode: str) -> Table:
    table = Table(title=f"Leakage audit: patient-level splits (test: {test_mode})", title_justify="left")
    for col in ("Fold", "Train img/pat", "Val img/pat", "Test img/pat", "Shared patients"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in audit:
        table.add_row(
            str(r["fold"]),
            f"{r['train_images']}/{r['train_patients']}",
            f"{r['val_images']}/{r['val_patients']}",
            f"{r['test_images']}/{r['test_patients']}",
            f"[green]{r['shared_patients']} ✓[/]",
        )
    return table


def folds_table(m: dict) -> Table:
    table = _table("Patient-level cross-validation (validation on view 0)", "Fold", "Val img", "Epoch")
    for f in m["folds"]:
        table.add_row(str(f["fold"]), str(f["val_images"]), str(f["best_epoch"]), *_row(f))
    s = m["summary"]
    table.add_section()
    table.add_row("mean±std", "", "", *_row(s, with_std=True), style="bold")
    table.add_row(f"peak (fold {s['peak_fold']})", "", "", *_row(m["folds"][s["peak_fold"]]))
    if "tta" in s:
        table.add_row("TTA mean±std", "", "", *_row(s["tta"], with_std=True))
    table.add_section()
    table.add_row("paper Table II", "", "", *_row(PAPER_CV, with_std=True), style="dim")
    table.add_row("paper peak", "", "", fmt(PAPER_CV["peak_accuracy"], True), "", "", "", "", style="dim")
    return table


def test_table(m: dict) -> Table | None:
    t = m.get("test")
    if not t:
        return None
    table = _table(f"Test set ({t['images']} images, {m['splits']['test_patients']} patients)", "Model")
    names = {
        "final": f"final head ({m['final_head']['epochs']} ep)",
        "ensemble": "fold ensemble",
        "final_tta": "final head + TTA",
        "ensemble_tta": "fold ensemble + TTA",
    }
    for key, name in names.items():
        if key in t:
            table.add_row(name, *_row(t[key]))
    table.add_section()
    table.add_row("paper Table III", *_row(PAPER_TEST), style="dim")
    return table


def print_run(m: dict, out: Path, console: Console) -> None:
    cfg = m["config"]
    console.print(audit_table(m["splits"]["audit"], m["splits"]["test_mode"]))
    console.print(folds_table(m))
    table = test_table(m)
    if table is not None:
        console.print(table)
    secs = m.get("timings", {}).get("train_s")
    took = f" in {secs:.1f} s" if secs is not None else ""
    console.print(
        f"{len(m['folds'])} folds + final head trained{took} on {m['device']} ({m['precision']}): "
        f"lr {cfg['lr']:g}, batch {cfg['batch_size']}, {cfg['epochs']} epochs, "
        f"dropout {cfg['dropout']:g}, standardize {'on' if cfg['standardize'] else 'off'}. "
        f"Outputs in {out}"
    )
