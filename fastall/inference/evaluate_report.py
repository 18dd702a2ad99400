"""The evaluation's report page: ROC, confusion matrix and probability histograms, and the result tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastall.inference.shift import shift_line
from fastall.reporting.patient_text import patient_line


def write_evaluation_report(
    folder: Path, result: dict, y: np.ndarray, prob: np.ndarray, names: list[str], shown_as: Path
) -> Path:
    """``folder/report/index.html`` (self-contained: figures embedded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    from fastall.reporting.figures import save
    from fastall.reporting.html import Shown, Table, render

    out = folder / "report"
    figures = []
    t = result["threshold"]["value"] if len(names) == 2 else None
    if len(names) == 2 and np.unique(y).size == 2:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        RocCurveDisplay.from_predictions(y, prob[:, 1], pos_label=1, name=names[1], ax=ax)
        ax.plot([0, 1], [0, 1], ls=":", c="grey")
        figures.append(Shown("roc", "ROC curve (cells)", save(fig, out, "roc", svg=False), "", svg=False))
        plt.close(fig)
    pred = (prob[:, 1] >= t).astype(int) if t is not None else prob.argmax(1)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ConfusionMatrixDisplay.from_predictions(
        y, pred, labels=list(range(len(names))), display_labels=names, ax=ax, colorbar=False
    )
    how = f"cells called {names[-1]} at P >= {t:.3g}" if t is not None else "argmax"
    figures.append(Shown("confusion", "Confusion matrix", save(fig, out, "confusion", svg=False), how, False))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for c in sorted({int(v) for v in y}):
        ax.hist(prob[y == c, -1], bins=20, range=(0, 1), alpha=0.6, label=f"true {names[c]}")
    if t is not None:
        ax.axvline(t, c="k", ls="--", label=f"threshold {t:.3g}")
    ax.set_xlabel(f"P({names[-1]})")
    ax.legend()
    figures.append(Shown("hist", "Predicted probabilities", save(fig, out, "hist", svg=False), "", False))
    plt.close(fig)
    m = result["metrics"]
    rows = [[k, _fmt(m.get(k)), _ci(m, k)] for k in ("accuracy", "recall", "specificity", "precision", "auc")]
    tables = [Table("metrics", "Cell metrics (argmax)", ["metric", "value", "95% CI (patients)"], rows)]
    if "at_threshold" in result:
        a = result["at_threshold"]
        rows = [[k, _fmt(a.get(k))] for k in ("accuracy", "recall", "specificity", "precision", "f1")]
        tables.append(Table("threshold", f"At threshold {t:.3g}", ["metric", "value"], rows))
    notes = [f"threshold {t}: {result['threshold']['source']}"] if t is not None else []
    if "patient_level" in result:
        notes.append("patients: " + patient_line(result["patient_level"]))
    if "shift" in result:
        notes.append("domain shift: " + shift_line(result["shift"]))
    notes += result["warnings"] + result["notes"]
    html = render(
        title="External validation",
        run=str(shown_as),
        command=result["command"],
        metrics=None,
        tables=tables,
        figures=figures,
        notes=notes,
    )
    (out / "index.html").write_text(html, encoding="utf-8")
    return shown_as / "report" / "index.html"


def _fmt(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _ci(m: dict, key: str) -> str:
    ci = (m.get("ci") or {}).get("intervals") or {}
    iv = ci.get(key)
    return f"{iv[0]:.3f}–{iv[1]:.3f}" if iv else "n/a"
