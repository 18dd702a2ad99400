"""The outputs of `fastall compare`: rich tables (backbones ranked by pooled out-of-fold AUC beside their
logistic-probe baseline; each against the best: the paired bootstrap and per-fold differences; costs) and
compare.json / compare.csv."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fastall.reporting.tables import fmt
from fastall.system import csvsafe
from fastall.system.jsonable import plain

METRICS = ("accuracy", "precision", "recall", "f1", "auc")


def _ci(value: Any, low: Any, high: Any, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    f = "+.3f" if sign else ".3f"
    return f"{value:{f}} [{low:{f}}, {high:{f}}]" if low is not None and high is not None else f"{value:{f}}"


def _cost(value: Any, form: str) -> str:
    return "n/a" if value is None else format(value, form)


def _style(col: str) -> dict[str, Any]:
    """Names whole and left-aligned; numbers right-aligned, folded rather than cut in a narrow terminal."""
    if col in ("backbone", "weights"):
        return {"justify": "left", "no_wrap": True}
    return {"justify": "right", "overflow": "fold"}


def ranked_table(results: dict[str, Any]) -> Table:
    s, level = results["splits"], results["bootstrap"]["level"]
    table = Table(
        title=f"Backbones ranked by pooled out-of-fold AUC ({s['folds']} patient-level folds, the same for "
        f"each: {s['oof_images']} images of {s['oof_patients']} patients)",
        title_justify="left",
        caption=f"mean±std over folds; OOF: pooled out-of-fold, [{level:.0%} patient-bootstrap CI]; probe: "
        "the baseline, a standardised logistic regression on view 0, same folds; kNN20: cosine, weighted; "
        "95% at: labelled patients per class where the linear probe / the kNN reach 95% of their full "
        "accuracy",
    )
    for col in ("#", "backbone", "AUC", "Acc %", "OOF AUC [CI]", "probe OOF", "kNN20 OOF %", "95% at",
                "test AUC"):  # fmt: skip
        table.add_column(col, **_style(col))
    for e in results["backbones"]:
        m, oof = e["summary"], e.get("oof") or {}
        table.add_row(
            str(e["rank"]),
            escape(e["name"]),
            fmt(m.get("auc"), False, m.get("auc_std")),
            fmt(m.get("accuracy"), True, m.get("accuracy_std")),
            _ci(oof.get("auc"), oof.get("low"), oof.get("high")),
            fmt((e.get("probe") or {}).get("oof_auc"), False),
            fmt((e.get("protocols") or {}).get("knn20_oof_accuracy"), True),
            _reach(e.get("protocols")),
            fmt((e.get("test") or {}).get("auc"), False),
        )
    return table


PROTOCOL_FIELDS = ("knn20_oof_accuracy", "linear_reach_95", "knn20_reach_95")


def _reach(protocols: dict | None) -> str:
    """Labelled patients per class where the linear probe / the kNN reach 95% of their full accuracy."""
    if not protocols:
        return ""
    return f"{protocols.get('linear_reach_95')} / {protocols.get('knn20_reach_95')}"


def paired_table(results: dict[str, Any]) -> Table:
    """Each backbone against the best: the paired bootstrap's AUC difference and the per-fold differences."""
    folds, level = results["splits"]["folds"], results["bootstrap"]["level"]
    table = Table(
        title=f"Against the best ({escape(results['best'])}): the same patients in every replicate",
        title_justify="left",
        caption=f"ΔAUC: pooled out-of-fold, [{level:.0%} paired patient-bootstrap CI]; ≠ 0: CI excludes 0",
    )
    for col in ("backbone", "ΔAUC [CI]", "≠ 0", f"ΔAUC folds 0-{folds - 1}"):
        table.add_column(col, **_style(col))
    for e in results["backbones"]:
        vs = e.get("vs_best")
        if vs is None:
            continue
        diff = vs.get("auc") or {}
        verdict = "n/a" if not diff else ("yes" if diff["distinguishable"] else "no")
        table.add_row(
            escape(e["name"]),
            _ci(diff.get("difference"), diff.get("low"), diff.get("high"), True),
            verdict,
            " ".join(_cost(d, "+.3f") for d in vs["fold_differences"]["auc"]),
        )
    return table


def cost_table(results: dict[str, Any]) -> Table:
    table = Table(
        title="Cost of each backbone: extract time per image (all its views), end-to-end latency at batch 1",
        title_justify="left",
    )
    for col in ("backbone", "weights", "px", "dim", "params M", "views", "extract ms/img", "latency ms"):
        table.add_column(col, **_style(col))
    devices = set()
    for e in results["backbones"]:
        cost = e["cost"]
        params = cost.get("params")
        devices |= {f"extract: {cost['extract_device']}"} if cost.get("extract_device") else set()
        devices |= {f"latency: {cost['latency_device']}"} if cost.get("latency_device") else set()
        table.add_row(
            escape(e["name"]),
            escape(str(e["weights"])),
            str(e["image_size"]),
            str(e["dim"]),
            "n/a" if params is None else f"{params / 1e6:.1f}",
            str(e["views"]),
            _cost(cost.get("extract_ms_per_image"), ".1f"),
            _cost(cost.get("latency_ms"), ".1f"),
        )
    if not any(e["cost"].get("latency_ms") for e in results["backbones"]):
        devices.add("latency: use --latency")
    table.caption = escape("; ".join(sorted(devices)))
    return table


def print_comparison(results: dict[str, Any], out: Any, console: Console) -> None:
    for table in (ranked_table(results), paired_table(results), cost_table(results)):
        console.print(table)
    for e in results["backbones"]:
        if e.get("vs_best") is not None:
            console.print(escape(e["vs_best"]["statement"]), highlight=False, soft_wrap=True)
    for e in results["backbones"]:
        if e.get("verdict"):
            console.print(escape(f"{e['name']}: {e['verdict']['text']}"), highlight=False, soft_wrap=True)
    renamed = [f"{e['name']} -> {e['run']}" for e in results["backbones"] if Path(e["run"]).name != e["name"]]
    if renamed:
        line = "run folders (names read from the caches, made safe): " + "; ".join(renamed)
        console.print(escape(line), highlight=False, soft_wrap=True)
    if results.get("probe_note"):
        console.print(f"[yellow]warning:[/] {escape(results['probe_note'])}", highlight=False, soft_wrap=True)
    console.print(
        f"wrote {out}/compare.json, compare.csv and a run per backbone in {out}/runs", highlight=False
    )


CSV_FIELDS = (
    "rank",
    "name",
    "backbone",
    "weights",
    "image_size",
    "dim",
    *(k for m in METRICS for k in (m, f"{m}_std")),
    "oof_auc",
    "oof_auc_low",
    "oof_auc_high",
    "auc_diff_vs_best",
    "auc_diff_low",
    "auc_diff_high",
    "distinguishable",
    "probe_oof_auc",
    "knn20_oof_accuracy",
    "linear_reach_95",
    "knn20_reach_95",
    "test_auc",
    "extract_ms_per_image",
    "params",
    "latency_ms",
    "latency_device",
    "cache",
)


def write_csv(path: Path, results: dict[str, Any]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csvsafe.dict_writer(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for e in results["backbones"]:
            oof, diff = e.get("oof") or {}, ((e.get("vs_best") or {}).get("auc")) or {}
            writer.writerow(
                plain(
                    {
                        **{k: e.get(k) for k in ("rank", "name", "backbone", "weights", "image_size", "dim")},
                        **e["summary"],
                        "oof_auc": oof.get("auc"),
                        "oof_auc_low": oof.get("low"),
                        "oof_auc_high": oof.get("high"),
                        "auc_diff_vs_best": diff.get("difference"),
                        "auc_diff_low": diff.get("low"),
                        "auc_diff_high": diff.get("high"),
                        "distinguishable": diff.get("distinguishable"),
                        "probe_oof_auc": (e.get("probe") or {}).get("oof_auc"),
                        **{k: (e.get("protocols") or {}).get(k) for k in PROTOCOL_FIELDS},
                        "test_auc": (e.get("test") or {}).get("auc"),
                        **{k: e["cost"].get(k) for k in ("extract_ms_per_image", "params", "latency_ms")},
                        "latency_device": e["cost"].get("latency_device"),
                        "cache": e["cache"],
                    }
                )
            )


def write_outputs(folder: Path, results: dict[str, Any]) -> None:
    """compare.json and compare.csv, each written beside its target and renamed onto it."""
    text = json.dumps(plain(results), indent=2, allow_nan=False) + "\n"
    (folder / "compare.json.tmp").write_text(text)
    write_csv(folder / "compare.csv.tmp", results)
    for name in ("compare.json", "compare.csv"):
        os.replace(folder / f"{name}.tmp", folder / name)
