"""The figures of the probe report (matplotlib, Agg, no pyplot state), from probe.json and map.csv alone."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from fastall.reporting.figures import PALETTE


def protocols_figure(protocols: dict) -> Figure:
    """Pooled out-of-fold accuracy of every protocol with its 95% patient-bootstrap interval."""
    names = list(protocols)
    fig = Figure(figsize=(7.5, 0.32 * len(names) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    for i, name in enumerate(names):
        pooled = protocols[name].get("pooled") or {}
        acc = pooled.get("accuracy")
        ci = ((pooled.get("ci") or {}).get("intervals") or {}).get("accuracy")
        if acc is None:
            continue
        colour = PALETTE[0] if name.startswith("linear") else PALETTE[2] if name == "mlp" else PALETTE[1]
        ax.plot([acc], [i], "o", color=colour)
        if ci:
            ax.plot(ci, [i, i], "-", color=colour, lw=2)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("pooled out-of-fold accuracy (95% patient-bootstrap CI)")
    ax.grid(axis="x", alpha=0.3)
    return fig


CURVES = ("linear_fixed_c", "knn20_weighted")


def efficiency_figure(efficiency: dict, shown: tuple[str, ...] = CURVES) -> Figure:
    """Accuracy against labelled patients per class: mean over folds and draws, band = min-max over draws."""
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    curves = efficiency.get("curves") or {}
    names = [n for n in shown if n in curves] or list(curves)[:2]
    for colour, name in zip(PALETTE, names, strict=False):
        pts = curves[name]["points"]
        xs = np.array([p["patients_per_class"] for p in pts], dtype=float)
        label = f"{name} (95% of full at {curves[name]['reach_95']})"
        ax.plot(xs, [p["accuracy"] for p in pts], "o-", color=colour, label=label)
        ax.fill_between(xs, [p["low"] for p in pts], [p["high"] for p in pts], color=colour, alpha=0.2)
    ax.set_xscale("log", base=2)
    if names:
        pts = curves[names[0]]["points"]
        ax.set_xticks([p["patients_per_class"] for p in pts], [str(p["size"]) for p in pts])
        ax.minorticks_off()
    ax.set_xlabel(efficiency.get("unit", "patients per class") + " (last point: all)")
    ax.set_ylabel("validation accuracy")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def map_figure(points: list[dict], method: str) -> Figure:
    """The 2-D map three times: coloured by class, by patient and by fold (or test)."""
    fig = Figure(figsize=(13, 4.4), layout="constrained")
    xy = np.array([[float(p["x"]), float(p["y"])] for p in points])
    for j, key in enumerate(("class", "patient", "fold")):
        ax = fig.add_subplot(1, 3, j + 1)
        values = [p[key] for p in points]
        uniq = sorted(set(values))
        codes = np.array([uniq.index(v) for v in values])
        cmap = "tab10" if len(uniq) <= 10 else "tab20" if len(uniq) <= 20 else "nipy_spectral"
        colours = np.array([_colour(i, len(uniq), cmap) for i in range(len(uniq))])
        ax.scatter(xy[:, 0], xy[:, 1], c=colours[codes], s=4, alpha=0.7, linewidths=0)
        if len(uniq) <= 10:
            for i, v in enumerate(uniq):
                ax.plot([], [], "o", ms=4, label=str(v), color=colours[i])
            ax.legend(fontsize=7, loc="best", markerscale=1.5)
        ax.set_title(f"by {key} ({len(uniq)})")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{method.upper()} of view 0")
    return fig


def _colour(i: int, n: int, cmap: str):
    from matplotlib import colormaps

    return colormaps[cmap](i / max(n - 1, 1) if cmap == "nipy_spectral" else i)


def batch_figure(batch: dict) -> Figure:
    """Share of the k nearest neighbours from the same patient and of the same class, each beside chance."""
    fig = Figure(figsize=(7.5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    shares = [batch["same_patient_share"], batch["same_class_share"]]
    chance = [batch["same_patient_chance"], batch["same_class_chance"]]
    ys = np.arange(2)
    ax.barh(ys + 0.2, shares, height=0.4, color=PALETTE[3], label="observed")
    ax.barh(ys - 0.2, chance, height=0.4, color="#999999", label="chance")
    ax.set_yticks(ys, ["same patient", "same class"])
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of the {batch['k']} nearest neighbours")
    ax.legend(loc="lower right")
    return fig
