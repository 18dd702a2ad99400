"""What a backbone costs at inference: its parameter count and the end-to-end batch-1 latency (file ->
probabilities, eager fp32) of a trained run on this device, timed as `fastall bench` times it."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastall.inference.artifacts import load_run
from fastall.inference.bench import latency, machine_info, synthetic_files
from fastall.system.devices import resolve_device
from fastall.system.events import Reporter, silent


def backbone_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.backbone.parameters()))


def run_costs(
    runs: Mapping[str, str | Path],
    *,
    device: str = "cpu",
    images: int = 8,
    warmup: int = 3,
    iters: int = 20,
    reporter: Reporter | None = None,
) -> dict[str, dict[str, Any]]:
    """``{name: {"params", "latency_ms" (p50), "latency_p90_ms", "latency_device"}}`` for each run folder."""
    reporter = reporter or silent()
    dev = resolve_device(device)
    where = machine_info(dev)["device_name"]
    out = {}
    with tempfile.TemporaryDirectory(prefix="fastall-compare-") as tmp:
        files = synthetic_files(tmp, images)
        for name, run in runs.items():
            reporter.info(f"{name}: batch-1 latency on {where}")
            model = load_run(run, device=dev).optimize("fp32", backend="eager")
            timing = latency(model, files, warmup=warmup, iters=iters)["end_to_end"]
            out[name] = {
                "params": backbone_params(model),
                "latency_ms": timing["p50_ms"],
                "latency_p90_ms": timing["p90_ms"],
                "latency_device": f"{dev.type}: {where}",
            }
    return out
