"""The report's plots (matplotlib, Agg, no pyplot state), with sklearn's displays where they exist.

Each function takes plain arrays or metrics.json dicts and returns a ``Figure``; ``save`` writes PNG and SVG.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fastall.reporting.saved_runs import SavedPredictions

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
TEST_COLOUR, MEAN_COLOUR = "#111111", "#0b3d91"
DPI = 110


def save(fig: Figure, folder: Path, name: str, svg: bool = True) -> Path:
    """``folder/name.png`` (and ``.svg``); returns the PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{name}.png"
    fig.savefig(png, dpi=DPI)
    if svg:
        fig.savefig(folder / f"{name}.svg")
    return png


def ci_text(interval: list | None) -> str:
    if interval and interval[0] == interval[1]:
        return f"CI degenerate: every resample {interval[0]:.3f}"
    return f"95% CI {interval[0]:.3f}–{interval[1]:.3f}" if interval else "CI n/a"


def _interval(metrics: dict | None, name: str) -> str:
    """``95% CI a–b``, ``CI unreliable`` (< 10 patients) or ``CI n/a`` from a metrics.json block."""
    ci = (metrics or {}).get("ci")
    if not ci:
        return "CI n/a"
    if not ci.get("reliable"):
        return f"CI unreliable: {ci.get('patients', '?')} patients"
    return ci_text((ci.get("intervals") or {}).get(name))


def _restyle_last(ax, **style) -> None:
    ax.get_lines()[-1].set(**style)


def _curves(
    p: SavedPredictions, test: dict | None, pooled: dict | None, kind: str
) -> tuple[Figure, dict[str, float]]:
    """ROC (``kind="roc"``) or precision-recall (``"pr"``) per fold, mean ± 1 std, and the test set."""
    from sklearn.metrics import (
        PrecisionRecallDisplay,
        RocCurveDisplay,
        precision_recall_curve,
        roc_curve,
    )

    roc = kind == "roc"
    display = RocCurveDisplay if roc else PrecisionRecallDisplay
    fig = Figure(figsize=(10.5, 5))
    ax = fig.add_axes((0.07, 0.1, 0.4, 0.82))
    grid = np.linspace(0, 1, 201)
    curves, areas = [], []
    for i, fold in enumerate(p.folds()):
        rows = p.rows("val")[p.fold[p.rows("val")] == fold]
        y, s = p.truth(rows), p.probability[rows]
        if np.unique(y).size < 2:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = display.from_predictions(y, s, ax=ax, name=f"fold {fold}")
        _restyle_last(ax, alpha=0.45, linewidth=1, color=PALETTE[i % len(PALETTE)])
        if roc:
            fpr, tpr, _ = roc_curve(y, s)
            curve = np.interp(grid, fpr, tpr)
            curve[0] = 0.0
            areas.append(d.roc_auc)
        else:
            precision, recall, _ = precision_recall_curve(y, s)
            curve = np.interp(grid, recall[::-1], precision[::-1])
            areas.append(d.average_precision)
        curves.append(curve)
    if curves:
        mean, std = np.mean(curves, 0), np.std(curves, 0)
        name = "auc" if roc else "pr_auc"
        label = "AUC" if roc else "AP"
        pooled_value = (pooled or {}).get(name)
        pooled_text = (
            f"; pooled out-of-fold {label} {pooled_value:.3f}, {_interval(pooled, name)}"
            if isinstance(pooled_value, float)
            else ""
        )
        spread = np.std(areas, ddof=1) if len(areas) > 1 else 0.0
        ax.plot(
            grid,
            mean,
            color=MEAN_COLOUR,
            linewidth=2.2,
            label=f"mean of folds ({label} {np.mean(areas):.3f} ± {spread:.3f}{pooled_text})",
        )
        ax.fill_between(
            grid,
            np.clip(mean - std, 0, 1),
            np.clip(mean + std, 0, 1),
            color=MEAN_COLOUR,
            alpha=0.15,
            label="± 1 std over folds",
        )
    rows = p.rows("test")
    if rows.size and np.unique(p.truth(rows)).size == 2:
        name = "auc" if roc else "pr_auc"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            display.from_predictions(
                p.truth(rows),
                p.probability[rows],
                ax=ax,
                name=f"test, final head [{_interval((test or {}).get('final'), name)}]",
            )
        _restyle_last(ax, color=TEST_COLOUR, linewidth=2, linestyle="--")
    if roc:
        ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=1, label="chance")
        ax.set(xlabel="false positive rate (1 − specificity)", ylabel="true positive rate (sensitivity)")
    else:
        prevalence = float(np.mean(p.truth(p.rows("val")))) if p.rows("val").size else math.nan
        if math.isfinite(prevalence):
            ax.axhline(prevalence, color="#999999", linestyle=":", linewidth=1, label="chance (prevalence)")
        ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title="ROC curves" if roc else "Precision-recall curves")
    ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    return fig, {"folds": len(curves)}


def roc_figure(p: SavedPredictions, test: dict | None = None, pooled: dict | None = None) -> Figure:
    """One ROC curve per fold, the mean with a ±1 std band (TPR interpolated on FPR), the test ROC."""
    return _curves(p, test, pooled, "roc")[0]


def pr_figure(p: SavedPredictions, test: dict | None = None, pooled: dict | None = None) -> Figure:
    """Precision-recall per fold, mean ± 1 std (precision interpolated on recall), the test curve."""
    return _curves(p, test, pooled, "pr")[0]


def one_vs_rest_figure(p: SavedPredictions) -> Figure | None:
    """ROC and precision-recall curves of every class against the rest: pooled out-of-fold (solid) and the
    test set (dashed), with each curve's area in the legend."""
    from sklearn.metrics import auc as area
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

    if p.probs is None or not np.isfinite(p.probs).all():
        return None
    fig = Figure(figsize=(11, 4.6))
    roc_ax, pr_ax = fig.subplots(1, 2)
    for c, name in enumerate(p.class_names):
        colour = PALETTE[c % len(PALETTE)]
        for split, style in (("val", "-"), ("test", "--")):
            rows = p.rows(split)
            y = (p.label[rows] == name).astype(int)
            if not rows.size or np.unique(y).size < 2:
                continue
            score = p.probs[rows, c]
            fpr, tpr, _ = roc_curve(y, score)
            precision, recall, _ = precision_recall_curve(y, score)
            where = "out-of-fold" if split == "val" else "test"
            roc_ax.plot(
                fpr, tpr, style, color=colour, label=f"{name} vs rest, {where} (AUC {area(fpr, tpr):.3f})"
            )
            ap = average_precision_score(y, score)
            pr_ax.step(
                recall, precision, style, where="post", color=colour, label=f"{name}, {where} (AP {ap:.3f})"
            )
    roc_ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=1)
    roc_ax.set(title="ROC, one class vs the rest", xlabel="false positive rate", ylabel="true positive rate")
    pr_ax.set(title="Precision-recall, one class vs the rest", xlabel="recall", ylabel="precision")
    for ax in (roc_ax, pr_ax):
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
        ax.legend(fontsize=6, loc="lower right" if ax is roc_ax else "lower left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_figure(p: SavedPredictions) -> Figure:
    """Pooled out-of-fold and test confusion matrices, as counts and row-normalised (the paper's Table IV)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    sets = [("out-of-fold (pooled)", p.rows("val")), ("test, final head", p.rows("test"))]
    sets = [(name, rows) for name, rows in sets if rows.size]
    crowded = len(p.class_names) > 2 or max(len(c) for c in p.class_names) > 8
    rotation = 35.0 if crowded else "horizontal"
    side = 4.0 + 0.45 * max(0, len(p.class_names) - 2)
    fig = Figure(figsize=(2 * side, (side - 0.4) * len(sets)))
    axes = np.atleast_2d(fig.subplots(len(sets), 2))
    for (name, rows), row_axes in zip(sets, axes, strict=True):
        for ax, normalize in zip(row_axes, (None, "true"), strict=True):
            ConfusionMatrixDisplay.from_predictions(
                p.label[rows].astype(str),
                p.prediction[rows].astype(str),
                labels=p.class_names,
                normalize=normalize,
                ax=ax,
                colorbar=False,
                cmap="Blues",
                values_format="d" if normalize is None else ".2f",
                xticks_rotation=rotation,
            )
            ax.set_title(f"{name}: {'counts' if normalize is None else 'row-normalised'}", fontsize=9)
    fig.tight_layout()
    return fig


def calibration_figure(p: SavedPredictions, pooled: dict | None = None, test: dict | None = None) -> Figure:
    """Reliability curves (10 equal-width bins) of the out-of-fold and test probabilities; Brier scores in
    the legend."""
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import brier_score_loss

    fig = Figure(figsize=(6.4, 6.4))
    ax, hist = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    for name, rows, block, colour in (
        ("out-of-fold", p.rows("val"), pooled, MEAN_COLOUR),
        ("test, final head", p.rows("test"), (test or {}).get("final"), TEST_COLOUR),
    ):
        if not rows.size:
            continue
        y, s = p.truth(rows), p.probability[rows]
        brier = float(brier_score_loss(y, s, pos_label=1))
        CalibrationDisplay.from_predictions(
            y,
            s,
            n_bins=10,
            ax=ax,
            name=f"{name} (Brier {brier:.3f}, {_interval(block, 'brier')})",
            ref_line=not ax.get_lines(),
        )
        _restyle_last(ax, color=colour)
        hist.hist(s, bins=20, range=(0, 1), histtype="step", color=colour, linewidth=1.5, label=name)
    ax.set(title="Calibration (reliability)", xlabel="", ylabel=f"fraction of {p.score_class}")
    ax.legend(loc="upper left", fontsize=7)
    ax.grid(alpha=0.3)
    hist.set(xlabel=f"predicted probability of {p.score_class}", ylabel="images")
    hist.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def curves_figure(history: dict) -> Figure:
    """Fig. 1: training and validation loss, validation accuracy and learning rate per epoch, per fold; the
    kept (early-stopping) epoch marked on each fold."""
    fig = Figure(figsize=(11, 3.8))
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    for i, h in enumerate(history.get("folds", [])):
        colour = PALETTE[i % len(PALETTE)]
        epochs = np.arange(1, len(h.get("train_loss", [])) + 1)
        loss_ax.plot(
            epochs, h.get("train_loss", []), color=colour, linewidth=1.2, label=f"fold {h['fold']} train"
        )
        val = np.arange(1, len(h.get("val_loss", [])) + 1)
        loss_ax.plot(
            val, h.get("val_loss", []), color=colour, linestyle="--", linewidth=1.2, label="validation"
        )
        acc = np.arange(1, len(h.get("val_accuracy", [])) + 1)
        acc_ax.plot(
            acc, np.asarray(h.get("val_accuracy", []), dtype=float), color=colour, label=f"fold {h['fold']}"
        )
        lr_ax.plot(np.arange(1, len(h.get("lr", [])) + 1), h.get("lr", []), color=colour, linewidth=1)
        best = h.get("best_epoch")
        if best:
            for ax in (loss_ax, acc_ax):
                ax.axvline(best, color=colour, linestyle=":", linewidth=1, alpha=0.8)
            if len(h.get("val_loss", [])) >= best:
                loss_ax.plot([best], [h["val_loss"][best - 1]], marker="o", color=colour)
    final = history.get("final") or {}
    if final.get("train_loss"):
        epochs = np.arange(1, len(final["train_loss"]) + 1)
        loss_ax.plot(epochs, final["train_loss"], color=TEST_COLOUR, linewidth=2, label="final head train")
        lr_ax.plot(
            np.arange(1, len(final.get("lr", [])) + 1), final.get("lr", []), color=TEST_COLOUR, linewidth=2
        )
    loss_ax.set(title="loss (dotted line: kept epoch)", xlabel="epoch", ylabel="cross-entropy")
    acc_ax.set(title="validation accuracy", xlabel="epoch", ylabel="accuracy")
    lr_ax.set(title="learning rate used", xlabel="epoch", ylabel="lr", yscale="log")
    handles, labels = loss_ax.get_legend_handles_labels()
    keep = {lab: h for h, lab in zip(handles, labels, strict=True)}
    loss_ax.legend(keep.values(), keep.keys(), fontsize=6, ncol=2)
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def sweep_rank_figure(sweep: dict, top: int = 25) -> Figure:
    """The ranked configurations: mean of the chosen metric over folds, ±1 std."""
    metric, rows = sweep["metric"], sweep["configs"][:top]
    varying = sweep.get("varying") or []
    labels = [f"#{r['rank']} " + ", ".join(f"{n}={_short(r['params'][n])}" for n in varying) for r in rows]
    mean = np.array([_num(r["summary"].get(metric)) for r in rows])
    std = np.nan_to_num(np.array([_num(r["summary"].get(f"{metric}_std")) for r in rows]))
    fig = Figure(figsize=(8, 0.9 + 0.28 * len(rows)))
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    ax.barh(y, mean, xerr=std, color=MEAN_COLOUR, alpha=0.75, error_kw={"linewidth": 0.8})
    ax.set_yticks(y, labels, fontsize=7)
    finite = mean[np.isfinite(mean)]
    if finite.size:
        low = max(0.0, float((finite - std[np.isfinite(mean)]).min()) - 0.02)
        ax.set_xlim(low, min(1.0, float((finite + std[np.isfinite(mean)]).max()) + 0.01))
    ax.set(xlabel=f"{metric}, mean ± std over folds", title=f"Sweep: top {len(rows)} by {metric}")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def sweep_heatmap_figure(sweep: dict) -> Figure | None:
    """The metric (best over the other parameters) over the two hyperparameters with most distinct values."""
    metric, rows = sweep["metric"], sweep["configs"]
    names = [n for n in (sweep.get("varying") or []) if len({repr(r["params"][n]) for r in rows}) > 1]
    names.sort(key=lambda n: -len({repr(r["params"][n]) for r in rows}))
    if len(names) < 2:
        return None
    a, b = names[:2]
    xs = sorted({r["params"][a] for r in rows}, key=_sort_key)
    ys = sorted({r["params"][b] for r in rows}, key=_sort_key)
    if sweep.get("random") or len(xs) > 12 or len(ys) > 12:
        xs, ys = _bins(xs), _bins(ys)
    grid = np.full((len(ys), len(xs)), np.nan)
    for r in rows:
        i, j = _cell(ys, r["params"][b]), _cell(xs, r["params"][a])
        value = _num(r["summary"].get(metric))
        if math.isfinite(value) and not grid[i, j] >= value:
            grid[i, j] = value
    fig = Figure(figsize=(1.6 + 0.7 * len(xs), 1.4 + 0.5 * len(ys)))
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    fig.colorbar(image, ax=ax, label=f"{metric} (best mean over folds)")
    ax.set_xticks(range(len(xs)), [_short(x) for x in xs], rotation=45, fontsize=7)
    ax.set_yticks(range(len(ys)), [_short(y) for y in ys], fontsize=7)
    for i, j in zip(*np.nonzero(np.isfinite(grid)), strict=True):
        ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=6, color="white")
    ax.set(xlabel=a, ylabel=b, title=f"{metric} over {a} × {b}")
    fig.tight_layout()
    return fig


def _num(value) -> float:
    return float(value) if isinstance(value, (int, float)) and value is not None else math.nan


def _short(value) -> str:
    if isinstance(value, tuple):
        return f"{_short(value[0])}–{_short(value[1])}"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _sort_key(value) -> tuple:
    return (0, float(value), "") if isinstance(value, (int, float)) else (1, 0.0, str(value))


def _bins(values: list, n: int = 6) -> list:
    """Sampled (``--random``) numeric values: up to ``n`` quantile bins, as ``(low, high)`` tuples."""
    if len(values) <= n or not all(isinstance(v, (int, float)) for v in values):
        return values
    edges = np.unique(np.quantile(np.asarray(values, dtype=float), np.linspace(0, 1, n + 1)))
    return [(float(lo), float(hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def _cell(axis: list, value) -> int:
    if axis and isinstance(axis[0], tuple):
        for i, (_, hi) in enumerate(axis):
            if value <= hi:
                return i
        return len(axis) - 1
    return axis.index(value)
