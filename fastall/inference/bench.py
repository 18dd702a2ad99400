"""`fastall bench`: end-to-end (file -> probabilities) and model-only latency and throughput.

End-to-end times Pillow decoding of real 450x450 BMP files (a synthetic C-NMC tree written to a temporary
folder), the shared preprocessing, the backbone and the head. Model-only times the backbone and head on random
normalised tensors already on the device. Batch 1 gives p50/p90/p99 latency after warm-up; every batch size
gives throughput.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastall.data.loader import decode_resized, default_workers
from fastall.data.walk import find_images
from fastall.errors import FastallError
from fastall.head import Head
from fastall.inference.artifacts import load_run
from fastall.inference.bench_config import BENCH_PRECISIONS, BenchConfig
from fastall.inference.model import LeukemiaClassifier
from fastall.inference.precision import calibration_pick, compare_logits, logits, try_precision
from fastall.inference.timing import paired_latency, paired_throughput, ratio_text
from fastall.system.devices import decide_precision, resolve_device
from fastall.system.events import Reporter, silent
from fastall.system.machine import machine_info, thread_info

__all__ = ["machine_info", "run_bench", "render", "latency", "throughput", "random_model"]

PAPER_CLAIMS_MS = {"cpu": 50.0, "cuda": 10.0}
RANDOM_LABEL = "random-init {} + random head (no --run: timing only, predictions meaningless)"
DEFAULT_BATCH_SIZES = {"cpu": (1, 8, 32), "cuda": (1, 8, 32, 256)}
CHECK_IMAGES = 16  # images the precision is checked on (of the benchmark's synthetic files)


def random_model(
    image_size: int | None, device: str = "cpu", seed: int = 0, backbone: str = "resnet50"
) -> LeukemiaClassifier:
    """A random-init ``backbone`` (at ``image_size``, or its own size) and a random head (labelled as such
    in every report)."""
    from fastall.features.backbone import get_spec, load_backbone

    model, info = load_backbone("none", seed=seed, backbone=backbone, image_size=image_size)
    size = info.input_size(image_size)
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


@torch.inference_mode()
def latency(
    model: LeukemiaClassifier, files: Sequence[Path], *, warmup: int, iters: int, rounds: int = 1
) -> dict[str, Any]:
    """Batch-1 latency, end-to-end from a file path and model-only from a normalised tensor, interleaved."""
    device, size = model.device, model.image_size
    x = torch.randn(1, 3, size, size, device=device)

    def model_only(_: int) -> None:
        model.forward_head(model.backbone_features(x)).cpu()

    def end_to_end(i: int) -> None:
        image = decode_resized(files[i % len(files)], size)[None]
        torch.softmax(model(image.to(device)), dim=1).cpu()

    return paired_latency(model_only, end_to_end, device, warmup=warmup, iters=iters, rounds=rounds)


@torch.inference_mode()
def throughput(
    model: LeukemiaClassifier, files: Sequence[Path], batch_size: int, *, batches: int, workers: int
) -> dict[str, float]:
    """Images per second at ``batch_size``: model-only, and end-to-end with ``workers`` decoder processes."""
    device, size = model.device, model.image_size
    x = torch.randn(batch_size, 3, size, size, device=device)

    def model_only(_: int) -> None:
        model.forward_head(model.backbone_features(x)).cpu()

    def infer(images: torch.Tensor) -> None:
        torch.softmax(model(images.to(device, non_blocking=True)), dim=1).cpu()

    return paired_throughput(
        model_only, infer, files, size, batch_size, device, batches=batches, workers=workers
    )


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
    config: BenchConfig | None = None,
    *,
    model: LeukemiaClassifier | None = None,
    reporter: Reporter | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """The whole benchmark; returns a JSON-ready dict. ``config``: every setting
    (:class:`~fastall.inference.bench_config.BenchConfig`); ``settings``: fields of it by name, on top.
    ``reporter`` gets progress lines as ``info``, first an estimate of the time it takes (silent by default).
    Defaults: batch sizes 1,8,32 on the CPU (1..256 on a GPU), 2 timed batches on the CPU (3 on a GPU): about
    a minute on 2 CPU cores. ``onnx``: also time that ONNX model (ONNX Runtime). Without ``run`` or
    ``model``: a random-init ``backbone`` at ``image_size`` (None: its own size)."""
    cfg = BenchConfig.of(config, **settings)
    threads = cfg.threads
    if threads is not None and not 1 <= threads <= (usable := thread_info()["usable_cores"]):
        raise FastallError(f"--threads {threads}: this process may use {usable} CPU core(s); use 1..{usable}")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        dev = resolve_device(cfg.device)
        cuda = dev.type == "cuda"
        cfg = replace(
            cfg,
            batch_sizes=cfg.batch_sizes or DEFAULT_BATCH_SIZES["cuda" if cuda else "cpu"],
            batches=cfg.batches or (3 if cuda else 2),
            workers=default_workers(dev) if cfg.workers is None else cfg.workers,
        )
        return _run_bench(cfg, dev, model, reporter or silent())
    finally:
        torch.set_num_threads(previous)


def estimate_s(probe_s: float, device: torch.device, plan: dict[str, Any]) -> float:
    """Rough seconds for ``plan`` from one batch-1 forward (``probe_s``): the CPU's cost grows with the
    images, a GPU's with the calls (batch 1 is latency-bound there). Building a traced or int8 model
    counts as a few forwards; an int8 check also calibrates."""
    sizes, check = plan["batch_sizes"], plan["check"] * (3 if plan["precision"] == "int8" else 2)
    build = 4 if plan["check"] else 0
    calls = check + build + plan["warmup"] + 2 * plan["iters"] + 2 * (plan["batches"] + 1) * len(sizes)
    images = check + build + plan["warmup"] + 2 * plan["iters"] + 2 * (plan["batches"] + 1) * sum(sizes)
    return probe_s * (calls if device.type == "cuda" else images) * (2 if plan["onnx"] else 1)


def _probe_s(model: LeukemiaClassifier) -> float:
    x = torch.zeros(1, 3, model.image_size, model.image_size, dtype=torch.uint8)
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        model(x)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
    return time.perf_counter() - start


def _run_bench(
    cfg: BenchConfig, dev: torch.device, model: LeukemiaClassifier | None, reporter: Reporter
) -> dict[str, Any]:
    """:func:`run_bench` with the device's defaults filled in."""
    log, image_size = reporter.info, cfg.image_size
    choice = decide_precision(cfg.precision, dev, allowed=BENCH_PRECISIONS)
    session = None
    if cfg.onnx is not None:
        from fastall.inference.onnx_export import image_size_of, open_fastall_onnx

        session = open_fastall_onnx(cfg.onnx)
        image_size = image_size_of(session)
    if model is None:
        if cfg.run is None:
            model = random_model(image_size, str(dev), backbone=cfg.backbone)
        else:
            model = load_run(cfg.run, device=dev)
    if session is not None and model.image_size != image_size:
        raise FastallError(
            f"{cfg.onnx}: takes {image_size} px images but the run's are {model.image_size} px"
        )
    check = 0 if choice.precision == "fp32" and cfg.backend == "eager" else min(cfg.images, CHECK_IMAGES)
    plan = {
        "batch_sizes": cfg.batch_sizes,
        "check": check,
        "warmup": cfg.warmup,
        "iters": cfg.iters,
        "batches": cfg.batches,
    }
    with tempfile.TemporaryDirectory(prefix="fastall-bench-") as tmp:
        start = time.perf_counter()
        files = synthetic_files(tmp, cfg.images)
        guess = (
            time.perf_counter()
            - start
            + estimate_s(
                _probe_s(model), dev, {**plan, "precision": choice.precision, "onnx": session is not None}
            )
        )
        sizes = ",".join(map(str, cfg.batch_sizes))
        log(
            f"bench: about {guess:.0f} s ({choice.precision}, batch sizes {sizes}, "
            f"{cfg.iters} batch-1 calls; --batch-sizes and --iters change it)"
        )
        compared = max(check, min(cfg.images, CHECK_IMAGES) if session is not None else 1)
        pixels = torch.stack([decode_resized(p, model.image_size) for p in files[:compared]])
        agree = None
        if check:
            log(f"checking {choice.precision} against fp32 on {check} images")
            model, agree = agreement(model, pixels, choice.precision, backend=cfg.backend)
        else:
            model = model.optimize("fp32", backend="eager")
        log("batch-1 latency")
        lat = latency(model, files, warmup=cfg.warmup, iters=cfg.iters)
        tput = []
        for bs in cfg.batch_sizes:
            log(f"throughput at batch size {bs}")
            tput.append(throughput(model, files, bs, batches=cfg.batches, workers=cfg.workers))
        onnx_result = None
        if session is not None:
            log(f"ONNX Runtime: {cfg.onnx}")
            timing = (cfg.warmup, cfg.iters, cfg.batches)
            onnx_result = onnx_bench(session, model, files, pixels, cfg.batch_sizes, *timing)
    claim = PAPER_CLAIMS_MS.get(dev.type)
    p50 = lat["end_to_end"]["p50_ms"]
    return {
        "machine": machine_info(dev),
        "model": model.provenance.get("label") or f"run {cfg.run}",
        "backbone": model.provenance.get("backbone")
        or model.provenance.get("key_params", {}).get("backbone")
        or "resnet50",
        "precision": model.precision,
        "precision_decision": choice.to_dict(),
        "backend": model.backend,
        "image_size": model.image_size,
        "decode_workers": cfg.workers,
        "source_images": "synthetic 450x450 24-bit BMP (fastall.data.synth), decoded by fastall.data.images",
        "settings": {**plan, "batch_sizes": list(cfg.batch_sizes), "images": cfg.images},
        "estimated_s": guess,
        "latency_batch1": lat,
        "throughput": tput,
        "agreement_vs_fp32": agree,
        "onnx": onnx_result,
        "paper_claim": {
            "ms_per_image": claim,
            "end_to_end_p50_ms": p50,
            "meets_claim": None if claim is None else p50 < claim,
            "p50_vs_claim": None if claim is None else p50 / claim,
        },
    }


def onnx_latency(
    session: Any, files: Sequence[Path], size: int, *, warmup: int, iters: int, rounds: int = 1
) -> dict[str, Any]:
    """Batch-1 latency of an ONNX Runtime session: from a file path, and on decoded uint8 pixels."""
    from fastall.inference.onnx_export import INPUT

    one = decode_resized(files[0], size)[None].numpy()

    def end_to_end(i: int) -> None:
        session.run(None, {INPUT: decode_resized(files[i % len(files)], size)[None].numpy()})

    def model_only(_: int) -> None:
        session.run(None, {INPUT: one})

    cpu = torch.device("cpu")
    return paired_latency(model_only, end_to_end, cpu, warmup=warmup, iters=iters, rounds=rounds)


def onnx_bench(
    session: Any,
    model: LeukemiaClassifier,
    files: Sequence[Path],
    pixels: torch.Tensor,
    batch_sizes: Sequence[int],
    warmup: int,
    iters: int,
    batches: int,
    rounds: int = 1,
) -> dict[str, Any]:
    """ONNX Runtime (CPU) beside the PyTorch path: batch-1 latency, throughput, and agreement with fp32 (the
    one rule) on the benchmark images. Model-only here is the graph on decoded uint8 pixels."""
    from fastall.inference.onnx_export import INPUT, run_onnx

    size, cpu, one = model.image_size, torch.device("cpu"), pixels[:1].numpy()
    lat = onnx_latency(session, files, size, warmup=warmup, iters=iters, rounds=rounds)
    tput = []
    for bs in batch_sizes:
        batch = np.ascontiguousarray(np.repeat(one, bs, axis=0))
        tput.append(
            paired_throughput(
                lambda _, b=batch: session.run(None, {INPUT: b}),
                lambda images: session.run(None, {INPUT: images.contiguous().numpy()}),
                files,
                size,
                bs,
                cpu,
                batches=batches,
                workers=0,
            )
        )
    reference = logits(model.optimize("fp32", backend="eager"), pixels)
    trial = compare_logits(
        "fp32", "onnxruntime", reference, torch.from_numpy(run_onnx(session, pixels.numpy())[0])
    )
    return {
        "provider": session.get_providers()[0],
        "latency_batch1": lat,
        "throughput": tput,
        "agreement_vs_fp32": trial.to_dict(),
    }


def render(result: dict[str, Any]):
    """Rich tables: batch-1 latency beside the paper's claim, then throughput per batch size (with ONNX
    Runtime beside PyTorch where measured)."""
    from rich.table import Table

    m = result["machine"]
    claim = result["paper_claim"]["ms_per_image"]
    onnx = result.get("onnx")
    lat = Table(
        title=f"batch-1 latency, {m['device_name']} ({m['device']}, {m.get('cpu_capability_label', '')}), "
        f"{result['precision']}, {result['image_size']} px — {result['model']}"
    )
    for col in ("path", "p50 ms", "p90 ms", "p99 ms", "paper claim"):
        lat.add_column(col, justify="left" if col == "path" else "right")
    rows = [("", result["latency_batch1"])] + ([("onnxruntime ", onnx["latency_batch1"])] if onnx else [])
    for prefix, block in rows:
        for name in ("end_to_end", "model_only"):
            r = block[name]
            lat.add_row(
                prefix + name.replace("_", "-"),
                f"{r['p50_ms']:.1f}",
                f"{r['p90_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"< {claim:g} ms" if claim and name == "end_to_end" else "",
            )
    tput = Table(title="throughput (images/s)")
    for col in ("path", "batch", "end-to-end", "model-only", "ratio"):
        tput.add_column(col, justify="right")
    rows = [("pytorch", result["throughput"])] + ([("onnxruntime", onnx["throughput"])] if onnx else [])
    for path, block in rows:
        for r in block:
            tput.add_row(
                path,
                str(r["batch_size"]),
                f"{r['end_to_end_img_s']:.1f}",
                f"{r['model_only_img_s']:.1f}",
                ratio_text(r),
            )
    return lat, tput
