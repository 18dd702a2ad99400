"""The terminal summary of a `fastall probe` run (rich), rendered by the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fastall.reporting.tables import fmt, fmt_ci


def print_probe(rec: dict, out: Path, console: Console, report: Any = None) -> None:
    """One row per protocol of probe.json's content ``rec`` (mean CV accuracy, pooled accuracy with its CI,
    AUC, where 95% of the full accuracy is reached), the batch-effect line and the folder."""
    curves = (rec.get("label_efficiency") or {}).get("curves", {})
    table = Table(title="Protocols on the same patient-level folds")
    for name in ("protocol", "CV acc %", "pooled acc % [95% CI]", "AUC", "95% at"):
        table.add_column(name, justify="left" if name == "protocol" else "right")
    for name, s in rec["protocols"].items():
        table.add_row(
            name,
            fmt(s["summary"].get("accuracy"), True, s["summary"].get("accuracy_std")),
            fmt_ci(s.get("pooled"), "accuracy", True),
            fmt((s.get("pooled") or {}).get("auc"), False),
            str((curves.get(name) or {}).get("reach_95", "")),
        )
    console.print(table)
    lin = rec["linear"]
    console.print("linear C per fold: " + ", ".join(f"{c:.3g}" for c in lin["chosen_c"]))
    be = rec["batch_effect"]
    console.print(
        f"batch effect: {100 * be['same_patient_share']:.1f}% of {be['k']} nearest neighbours from the same "
        f"patient (chance {100 * be['same_patient_chance']:.1f}%), "
        f"{100 * be['same_class_share']:.1f}% of the same class (chance {100 * be['same_class_chance']:.1f}%)"
    )
    if rec.get("embedding"):
        console.print(f"map: {rec['embedding']['method']}")
    console.print(f"Probe folder: {out}")
    if report is not None:
        console.print(f"Report: {report.path}", soft_wrap=True)
