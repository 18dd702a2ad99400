"""Timing primitives shared by `bench` and the benchmarks: percentiles, interleaved batch-1 latency, and
model-only against end-to-end throughput, for any pair of callables (PyTorch or ONNX Runtime)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastall.data.loader import iter_batches


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "n": len(ms),
    }


def time_calls(fn: Callable[[int], None], device: torch.device, warmup: int, iters: int) -> list[float]:
    for i in range(warmup):
        fn(i)
    sync(device)
    times = []
    for i in range(iters):
        start = time.perf_counter()
        fn(i)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def paired_latency(
    model_only: Callable[[int], None],
    end_to_end: Callable[[int], None],
    device: torch.device,
    *,
    warmup: int,
    iters: int,
    rounds: int = 1,
) -> dict[str, Any]:
    """Batch-1 latency of both paths, interleaved call by call; with ``rounds`` > 1 (a shared, noisy machine)
    the round with the lowest end-to-end p50 is kept and every round's p50 reported."""
    time_calls(lambda i: (model_only(i), end_to_end(i)), device, warmup, 0)
    best, p50s = None, []
    for _ in range(rounds):
        mo, e2e = [], []
        for i in range(iters):
            mo += time_calls(model_only, device, 0, 1)
            e2e += time_calls(lambda _, i=i: end_to_end(i), device, 0, 1)
        result = {"model_only": percentiles(mo), "end_to_end": percentiles(e2e)}
        p50s.append(result["end_to_end"]["p50_ms"])
        if best is None or p50s[-1] < best["end_to_end"]["p50_ms"]:
            best = result
    return {**best, "rounds_end_to_end_p50_ms": p50s}


def paired_throughput(
    model_only: Callable[[int], None],
    infer: Callable[[torch.Tensor], None],
    files: Sequence[Path],
    size: int,
    batch_size: int,
    device: torch.device,
    *,
    batches: int,
    workers: int,
) -> dict[str, float]:
    """Images/s at ``batch_size``: ``model_only`` (one call = one batch), and ``infer`` on uint8 batches
    decoded from ``files`` by ``workers`` processes, timed from the first batch's arrival over a stream long
    enough that batches decoded during the start-up are a small part of it (at least 4 per worker)."""
    model_s = time_calls(model_only, device, 1, batches)
    n_batches = max(batches, 4 * workers)
    stream = [files[i % len(files)] for i in range(batch_size * (n_batches + 1))]
    loader = iter_batches(stream, size, batch_size, workers=workers, pin_memory=device.type == "cuda")
    infer(next(loader).images)
    start, count = time.perf_counter(), 0
    for batch in loader:
        infer(batch.images)
        count += len(batch.indices)
    sync(device)
    e2e = count / (time.perf_counter() - start)
    mo = batch_size * len(model_s) / sum(model_s)
    rates = [batch_size / t for t in model_s]
    spread = (max(rates) - min(rates)) / float(np.median(rates)) if len(rates) > 1 else float("nan")
    ratio = e2e / mo
    return {
        "batch_size": batch_size,
        "model_only_img_s": mo,
        "end_to_end_img_s": e2e,
        "end_to_end_vs_model_only": ratio,
        "model_only_batches": len(rates),
        "model_only_spread": spread,
        "ratio_within_noise": bool(ratio > 1 or abs(ratio - 1) <= spread),
        "timed_images": count,
    }


def ratio_text(row: dict[str, Any]) -> str:
    """The end-to-end / model-only ratio as shown: one above 1 (end-to-end cannot be faster than the model
    alone) or within the model-only timings' spread is marked as noise, not a result."""
    ratio, spread = row["end_to_end_vs_model_only"], row.get("model_only_spread")
    if not row.get("ratio_within_noise"):
        return f"{ratio:.2f}"
    noise = f"±{spread:.0%} spread" if spread == spread and spread is not None else "one batch timed"
    return f"{ratio:.2f} (≈1, within noise: {noise} over {row.get('model_only_batches', '?')} batches)"
