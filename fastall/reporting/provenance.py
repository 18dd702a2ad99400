"""Where a run came from: the command that made it and its provenance, as rows for the report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def command_line(argv: list[str] | None = None) -> str:
    """The running command: ``fastall ...`` from the CLI (console script or ``python -m fastall``), else the
    Python command line that called the library."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return "(unknown)"
    program = Path(argv[0])
    if program.name == "fastall" or (program.name == "__main__.py" and program.parent.name == "fastall"):
        return shlex.join(["fastall", *argv[1:]])
    return shlex.join(["python", *argv]) + "  (library call)"


HEAD_KEYS = ("lr", "weight_decay", "batch_size", "epochs", "min_steps", "patience", "dropout", "hidden")


def _protocol(p: dict | None) -> str | None:
    if not p:
        return None
    where = "the reported fold (optimistic)" if p.get("selection") == "fold" else "an inner split"
    text = f"preset {p.get('preset') or 'none'}, views {p.get('train_views')}, selection on {where}"
    return text + (f", start {p['head_init']}" if p.get("head_init") else "")


def provenance_rows(m: dict) -> list[tuple[str, str]]:
    """(name, value) rows: versions, cache, backbone weights, dataset, device and precision, settings (rows
    the run does not record are left out)."""
    cache = m.get("cache") or {}
    kp = cache.get("key_params") or {}
    env = m.get("environment") or {}
    cfg = m.get("config") or {}
    timings = m.get("timings") or {}
    rows = [
        ("fastall version", m.get("fastall_version")),
        ("feature cache", cache.get("path")),
        ("cache key", cache.get("key")),
        (
            "backbone",
            f"{kp['backbone']}, {kp.get('image_size', '?')} px, {kp.get('views', '?')} views"
            if "backbone" in kp
            else None,
        ),
        ("backbone weights", kp.get("weights")),
        ("weights sha256", kp.get("weights_sha256")),
        ("dataset fingerprint", kp.get("dataset_fingerprint")),
        ("dataset images", kp.get("dataset_images", cache.get("images"))),
        ("data root (recorded)", cache.get("data_root")),
        ("device / precision", f"{m.get('device', 'n/a')} / {m.get('precision', 'n/a')}"),
        ("torch / python", f"{env['torch']} / {env.get('python', 'n/a')}" if "torch" in env else None),
        (
            "head settings",
            ", ".join(
                f"{k} {cfg[k]}"
                for k in (
                    "lr",
                    "weight_decay",
                    "batch_size",
                    "epochs",
                    "min_steps",
                    "patience",
                    "dropout",
                    "hidden",
                )
                if cfg.get(k) is not None
            )
            + (f", standardize {'on' if cfg.get('standardize') else 'off'}" if "standardize" in cfg else ""),
        ),
        (
            "splits",
            f"{cfg.get('folds', '?')} patient-level folds, test: {cfg.get('test', '?')}, "
            f"seed {cfg.get('seed', '?')}",
        ),
        ("protocol", _protocol(m.get("protocol"))),
        ("training time", f"{timings['train_s']:.1f} s" if "train_s" in timings else None),
    ]
    return [(name, str(value)) for name, value in rows if value not in (None, "")]
