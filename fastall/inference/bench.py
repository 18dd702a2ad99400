"""`fastall bench`: end-to-end (file -> probabilities) and model-only latency and throughput.

End-to-end times Pillow decoding of real 450x450 BMP files (a synthetic C-NMC tree written to a temporary
folder), the shared preprocessing, the backbone and the head. Model-only times the backbone and head on random
normalised tensors already on the device. Batch 1 gives p50/p90/p99 latency after warm-up; every batch size
gives throughput.
"""

from __future__ import annotations

import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastall.data.loader import decode_resized, default_workers, iter_batches
from fastall.data.walk import find_images
from fastall.errors import FastallError
from fastall.head import Head
from fastall.inference.artifacts import load_run
from fastall.inference.model import LeukemiaClassifier
from fastall.inference.precision import calibration_pick, try_precision
from fastall.system.devices import resolve_device

PAPER_CLAIMS_MS = {"cpu": 50.0, "cuda": 10.0}
RANDOM_LABEL = "random-init {} + random head (no --run: timing only, predictions meaningless)"


def machine_info(device: torch.device | str) -> dict[str, Any]:
    device = torch.device(device)
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device.type,
        "device_name": _cpu_model(),
        "load_average": list(os.getloadavg()),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def random_model(
    image_size: int | None, device: str = "cpu", seed: int = 0, backbone: str = "resnet50"
) -> LeukemiaClassifier:
    """A random-init ``backbone`` (at ``image_size``, or its own size) and a random head (labelled as such
    in every report)."""
    from fastall.features.backbone import get_spec, load_backbone

    model, info = load_backbone("none", seed=seed, backbone=backbone)
    size = info.natural_size if image_size is None else image_size
    info.check_size(size)
    torch.manual_seed(seed)
    return LeukemiaClassifier(
        model,
        Head(in_features=info.feature_dim),
        image_size=size,
        class_names=["hem", "all"],
        mean=info.mean,
        std=info.std,
        provenance={"label": RANDOM_LABEL.format(get_spec(backbone).title), "backbone": backbone},
    ).to(device)


def synthetic_files(folder: str | Path, n: int, size: int = 450, seed: int = 0) -> list[Path]:
    """At least ``n`` synthetic C-NMC BMP files of ``size`` px under ``folder`` (both classes)."""
    from fastall.data.synth import synthesize

    per_patient = max(2, min(20, n // 2))
    patients = max(1, math.ceil(1.6 * n / (2 * per_patient)))
    synthesize(
        folder,
        patients_per_class=patients,
        images_per_patient=per_patient,
        size=size,
        seed=seed,
        prelim=False,
        overwrite=True,
    )
    paths, _ = find_images([folder])
    if len(paths) < n:
        raise FastallError(f"{folder}: synthetic tree has {len(paths)} images, fewer than {n}")
    step = len(paths) / n
    return [paths[int(i * step)] for i in range(n)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _percentiles(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "n": len(ms),
    }


def _time_calls(fn: Callable[[int], None], device: torch.device, warmup: int, iters: int) -> list[float]:
    for i in range(warmup):
        fn(i)
    _sync(device)
    times = []
    for i in range(iters):
        start = time.perf_counter()
        fn(i)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


@torch.inference_mode()
def latency(
    model: LeukemiaClassifier, files: Sequence[Path], *, warmup: int, iters: int, rounds: int = 1
) -> dict[str, Any]:
    """Batch-1 latency, end-to-end from a file path and model-only from a normalised tensor, interleaved.

    With ``rounds`` > 1 (a shared, noisy machine) the round with the lowest end-to-end p50 is kept; every
    round's p50 is reported.
    """
    device, size = model.device, model.image_size
    x = torch.randn(1, 3, size, size, device=device)

    def model_only(_: int) -> None:
        model.forward_head(model.backbone_features(x)).cpu()

    def end_to_end(i: int) -> None:
        image = decode_resized(files[i % len(files)], size)[None]
        torch.softmax(model(image.to(device)), dim=1).cpu()

    _time_calls(lambda i: (model_only(i), end_to_end(i)), device, warmup, 0)
    best = None
    p50s = []
    for _ in range(rounds):
        mo, e2e = [], []
        for i in range(iters):
            mo += _time_calls(model_only, device, 0, 1)
            e2e += _time_calls(lambda _, i=i: end_to_end(i), device, 0, 1)
        result = {"model_only": _percentiles(mo), "end_to_end": _percentiles(e2e)}
        p50s.append(result["end_to_end"]["p50_ms"])
        if best is None or p50s[-1] < best["end_to_end"]["p50_ms"]:
            best = result
    return {**best, "rounds_end_to_end_p50_ms": p50s}


@torch.inference_mode()
def throughput(
    model: LeukemiaClassifier, files: Sequence[Path], batch_size: int, *, batches: int, workers: int
) -> dict[str, float]:
    """Images per second at ``batch_size``: model-only, and end-to-end with ``workers`` decoder processes.

    End-to-end is timed from the first batch's arrival (worker start-up excluded) over a stream long enough
    that batches decoded ahead during the start-up are a small part of it (at least 4 per worker).
    """
    device, size = model.device, model.image_size
    x = torch.randn(batch_size, 3, size, size, device=device)

    def model_only(_: int) -> None:
        model.forward_head(model.backbone_features(x)).cpu()

    model_s = _time_calls(model_only, device, 1, batches)
    n_batches = max(batches, 4 * workers)
    stream = [files[i % len(files)] for i in range(batch_size * (n_batches + 1))]
    loader = iter_batches(stream, size, batch_size, workers=workers, pin_memory=device.type == "cuda")
    first = next(loader)
    torch.softmax(model(first.images.to(device, non_blocking=True)), dim=1).cpu()
    start, count = time.perf_counter(), 0
    for batch in loader:
        torch.softmax(model(batch.images.to(device, non_blocking=True)), dim=1).cpu()
        count += len(batch.indices)
    e2e = count / (time.perf_counter() - start)
    mo = batch_size * len(model_s) / sum(model_s)
    return {
        "batch_size": batch_size,
        "model_only_img_s": mo,
        "end_to_end_img_s": e2e,
        "end_to_end_vs_model_only": e2e / mo,
        "timed_images": count,
    }


def agreement(
    model: LeukemiaClassifier, images: torch.Tensor, precision: str, *, backend: str = "auto"
) -> tuple[LeukemiaClassifier, dict[str, Any]]:
    """``model`` at ``precision`` and how it agrees with eager fp32 on ``images`` (the one rule; int8
    calibrated by the one pick, here among the same images)."""
    calibration = None
    if precision == "int8":
        one_class = np.zeros(len(images), dtype=np.int64)  # benchmark images carry no labels
        calibration = images[calibration_pick(one_class, np.arange(len(images)))]
    fast, trial = try_precision(model, images, precision, calibration=calibration, backend=backend)
    return fast, trial.to_dict()


def run_bench(
    *,
    device: str = "cpu",
    batch_sizes: Sequence[int] = (1, 8, 32, 256),
    precision: str = "fp32",
    threads: int | None = None,
    run: str | Path | None = None,
    images: int = 32,
    image_size: int | None = 224,
    warmup: int = 5,
    iters: int = 30,
    batches: int = 3,
    workers: int | None = None,
    backend: str = "auto",
    model: LeukemiaClassifier | None = None,
    backbone: str = "resnet50",
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """The whole benchmark; returns a JSON-ready dict (``log`` gets progress lines). Without ``run`` or
    ``model``: a random-init ``backbone`` at ``image_size`` (None: its own size)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_bench(
            device=device,
            batch_sizes=batch_sizes,
            precision=precision,
            run=run,
            images=images,
            image_size=image_size,
            warmup=warmup,
            iters=iters,
            batches=batches,
            workers=workers,
            backend=backend,
            model=model,
            backbone=backbone,
            log=log,
        )
    finally:
        torch.set_num_threads(previous)


def _run_bench(
    *,
    device: str,
    batch_sizes: Sequence[int],
    precision: str,
    run: str | Path | None,
    images: int,
    image_size: int | None,
    warmup: int,
    iters: int,
    batches: int,
    workers: int | None,
    backend: str,
    model: LeukemiaClassifier | None,
    backbone: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    dev = resolve_device(device)
    if model is None:
        model = load_run(run, device=dev) if run else random_model(image_size, str(dev), backbone=backbone)
    workers = default_workers(dev) if workers is None else workers
    with tempfile.TemporaryDirectory(prefix="fastall-bench-") as tmp:
        log(f"writing {images} synthetic 450x450 BMP files")
        files = synthetic_files(tmp, images)
        agree = None
        if precision != "fp32" or backend != "eager":
            pixels = torch.stack([decode_resized(p, model.image_size) for p in files])
            log(f"checking {precision} against fp32 on {len(pixels)} images")
            model, agree = agreement(model, pixels, precision, backend=backend)
        else:
            model = model.optimize("fp32", backend="eager")
        log("batch-1 latency")
        lat = latency(model, files, warmup=warmup, iters=iters)
        tput = []
        for bs in batch_sizes:
            log(f"throughput at batch size {bs}")
            tput.append(throughput(model, files, bs, batches=batches, workers=workers))
    claim = PAPER_CLAIMS_MS.get(dev.type)
    p50 = lat["end_to_end"]["p50_ms"]
    return {
        "machine": machine_info(dev),
        "model": model.provenance.get("label") or f"run {run}",
        "backbone": model.provenance.get("backbone")
        or model.provenance.get("key_params", {}).get("backbone")
        or "resnet50",
        "precision": model.precision,
        "backend": model.backend,
        "image_size": model.image_size,
        "decode_workers": workers,
        "source_images": "synthetic 450x450 24-bit BMP (fastall.data.synth), decoded with Pillow",
        "latency_batch1": lat,
        "throughput": tput,
        "agreement_vs_fp32": agree,
        "paper_claim": {
            "ms_per_image": claim,
            "end_to_end_p50_ms": p50,
            "meets_claim": None if claim is None else p50 < claim,
            "p50_vs_claim": None if claim is None else p50 / claim,
        },
    }


def render(result: dict[str, Any]):
    """Rich tables: batch-1 latency beside the paper's claim, then throughput per batch size."""
    from rich.table import Table

    m = result["machine"]
    claim = result["paper_claim"]["ms_per_image"]
    lat = Table(
        title=f"batch-1 latency, {m['device_name']} ({m['device']}), {result['precision']}, "
        f"{result['image_size']} px — {result['model']}"
    )
    for col in ("path", "p50 ms", "p90 ms", "p99 ms", "paper claim"):
        lat.add_column(col, justify="left" if col == "path" else "right")
    for name in ("end_to_end", "model_only"):
        r = result["latency_batch1"][name]
        lat.add_row(
            name.replace("_", "-"),
            f"{r['p50_ms']:.1f}",
            f"{r['p90_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"< {claim:g} ms" if claim and name == "end_to_end" else "",
        )
    tput = Table(title="throughput (images/s)")
    for col in ("batch", "end-to-end", "model-only", "ratio"):
        tput.add_column(col, justify="right")
    for r in result["throughput"]:
        tput.add_row(
            str(r["batch_size"]),
            f"{r['end_to_end_img_s']:.1f}",
            f"{r['model_only_img_s']:.1f}",
            f"{r['end_to_end_vs_model_only']:.2f}",
        )
    return lat, tput
