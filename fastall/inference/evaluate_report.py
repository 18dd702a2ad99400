"""The evaluation's report page: ROC, confusion matrix and probability histograms, and the result tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastall.inference.shift import shift_line
from fastall.reporting.patient_text import patient_line


def write_evaluation_report(
    folder: Path,
    result: dict,
    y: np.ndarray,
    prob: np.ndarray,
    names: list[str],
    shown_as: Path,
    run: str | Path | None = None,
) -> Path:
    """``folder/report/index.html`` (self-contained: figures embedded), with the provenance of ``run``'s
    metrics.json where it has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    from fastall.reporting.figures import save
    from fastall.reporting.html import Shown, Table, render

    out = folder / "report"
    figures = []
    positive = result.get("positive_class")
    pos = names.index(positive) if positive in names else None
    t = result["threshold"]["value"] if pos is not None else None
    if pos is not None and np.unique(y).size == 2:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        RocCurveDisplay.from_predictions(y == pos, prob[:, pos], name=f"{positive} (AUC)", ax=ax)
        ax.plot([0, 1], [0, 1], ls=":", c="grey")
        auc = result["metrics"].get("auc")
        how = f"positive class {positive}; the AUC in the table ({_fmt(auc)}) is the same number"
        figures.append(Shown("roc", "ROC curve (cells)", save(fig, out, "roc", svg=False), how, svg=False))
        plt.close(fig)
    pred = np.where(prob[:, pos] >= t, pos, 1 - pos) if t is not None else prob.argmax(1)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ConfusionMatrixDisplay.from_predictions(
        y, pred, labels=list(range(len(names))), display_labels=names, ax=ax, colorbar=False
    )
    how = f"cells called {positive} at P({positive}) >= {t:.3g}" if t is not None else "argmax"
    figures.append(Shown("confusion", "Confusion matrix", save(fig, out, "confusion", svg=False), how, False))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    shown = pos if pos is not None else len(names) - 1
    for c in sorted({int(v) for v in y}):
        ax.hist(prob[y == c, shown], bins=20, range=(0, 1), alpha=0.6, label=f"true {names[c]}")
    if t is not None:
        ax.axvline(t, c="k", ls="--", label=f"threshold {t:.3g}")
    ax.set_xlabel(f"P({names[shown]})")
    ax.legend()
    figures.append(Shown("hist", "Predicted probabilities", save(fig, out, "hist", svg=False), "", False))
    plt.close(fig)
    m = result["metrics"]
    label = {"recall": f"sensitivity ({positive})", "precision": f"PPV ({positive})"} if positive else {}
    keys = ("accuracy", "recall", "specificity", "precision", "auc")
    rows = [[label.get(k, k), _fmt(m.get(k)), _ci(m, k)] for k in keys]
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
    notes += result["notes"]
    run_metrics = _run_metrics(run)
    facts = [("Run", str(result.get("run"))), ("Positive class", positive or "none")]
    html = render(
        title="External validation",
        run=str(shown_as),
        command=result["command"],
        metrics=run_metrics,
        tables=tables,
        figures=figures,
        notes=notes,
        warnings=[{"code": "evaluate", "text": w} for w in result["warnings"]],
        facts=facts,
        extra={
            "no_provenance": f"The run {result.get('run')} has no metrics.json: its provenance is unknown."
        },
    )
    (out / "index.html").write_text(html, encoding="utf-8")
    return shown_as / "report" / "index.html"


def _run_metrics(run: str | Path | None) -> dict | None:
    """The evaluated run's metrics.json (its provenance), or None where it has none."""
    import json

    path = Path(run) / "metrics.json" if run is not None else None
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _fmt(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _ci(m: dict, key: str) -> str:
    ci = (m.get("ci") or {}).get("intervals") or {}
    iv = ci.get(key)
    return f"{iv[0]:.3f}–{iv[1]:.3f}" if iv else "n/a"
