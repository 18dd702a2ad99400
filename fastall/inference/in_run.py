"""Whether an image that explain shows was one the run trained on: the final head saw every pool image, so
its probability there is in-sample and will not match the out-of-fold one the report shows."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from fastall.errors import FastallError
from fastall.inference.explain import run_data_root
from fastall.inference.model import LeukemiaClassifier


def training_status(model: LeukemiaClassifier, data: str | Path | None) -> Callable[[str], str]:
    """path -> ``""`` (not a training image, or unknown) or a line saying the run trained on it: its final
    head saw the image, so the map's probability is in-sample; the report's is the out-of-fold one."""
    from fastall.reporting.saved_runs import positive_name, read_predictions

    run = model.provenance.get("run")
    csv_path = Path(str(run)) / "predictions.csv" if run else None
    if csv_path is None or not csv_path.is_file():
        return lambda path: ""
    try:
        root = Path(os.path.realpath(run_data_root(model, data)))
        metrics = Path(str(run)) / "metrics.json"
        m = json.loads(metrics.read_text()) if metrics.is_file() else None
        p = read_predictions(csv_path, list(model.class_names), positive_name(m))
    except (FastallError, OSError, ValueError):
        return lambda path: ""
    oof = {str(p.path[i]): float(p.probs[i].max()) for i in p.rows("val")}
    split = {str(path): str(s) for path, s in zip(p.path, p.split, strict=True)}

    def status(path: str) -> str:
        rel = os.path.relpath(os.path.realpath(path), root)
        if split.get(rel) == "val":
            return (
                f"a training image of the run: in-sample here; out of fold it was {oof[rel]:.3f} "
                "(the report's)"
            )
        return "a test image of the run (never trained on)" if rel in split else ""

    return status
