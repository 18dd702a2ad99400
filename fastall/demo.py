"""`fastall demo`: synth -> extract -> train-head --folds 5 (the default preset, and its HTML report) on
built-in synthetic data, in under 2 minutes on 2 CPU cores (16 patients, 3 views at 224 px; measured 26 s on
an AVX512_BF16 EPYC and 47 s with AVX2 emulated: benchmarks/results/cli_time_cpu_*.json)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from fastall.features.backbone import TORCHVISION_WEIGHTS
from fastall.system.events import Reporter, silent

DEMO_PATIENTS_PER_CLASS = 8
DEMO_IMAGES_PER_PATIENT = 10
DEMO_IMAGE_SIDE = 450
DEMO_INPUT_SIZE = 224
DEMO_VIEWS = 3


@dataclass
class DemoResult:
    out: Path
    weights: str
    cache: Path
    run: Path
    seconds: dict[str, float]
    result: object


def cached_imagenet_weights(name: str = "imagenet1k_v1") -> Path | None:
    """The torchvision checkpoint of ``name`` if it is already in the torch hub cache (no download)."""
    url = TORCHVISION_WEIGHTS[name].url
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    return path if path.is_file() else None


def run_demo(
    out: str | Path = "fastall-demo",
    *,
    device: str = "auto",
    seed: int = 0,
    patients_per_class: int = DEMO_PATIENTS_PER_CLASS,
    images_per_patient: int = DEMO_IMAGES_PER_PATIENT,
    image_side: int = DEMO_IMAGE_SIDE,
    input_size: int = DEMO_INPUT_SIZE,
    views: int = DEMO_VIEWS,
    reporter: Reporter | None = None,
) -> DemoResult:
    """Run the whole product once. Re-running reuses the synthetic data and the cache (extract resumes).

    Silent: each stage (``info`` code ``stage``), its lines and the warnings go to ``reporter``; the run's
    tables and :func:`finished_line` are the caller's to print (the CLI's ``fastall demo`` does)."""
    from fastall.data.synth import synthesize
    from fastall.features.extract import extract
    from fastall.features.summary import describe
    from fastall.training.config import TrainOptions
    from fastall.training.presets import DEFAULT_PRESET, apply_preset
    from fastall.training.train_head import train_head

    reporter = reporter or silent()
    out = Path(out)
    seconds: dict[str, float] = {}
    data = out / "data"
    t0 = time.perf_counter()
    if not (data / "C-NMC_Leukemia").is_dir():
        reporter.info("1/3 synth: synthetic C-NMC 2019 tree", code="stage")
        made = synthesize(
            data,
            patients_per_class=patients_per_class,
            images_per_patient=images_per_patient,
            size=image_side,
            seed=seed,
            reporter=reporter,
        )
        reporter.info(f"{made.images} images of {made.patients} patients in {made.root}")
    else:
        reporter.info(f"1/3 synth: reusing the synthetic tree in {data}", code="stage")
    seconds["synth"] = time.perf_counter() - t0

    weights = "imagenet1k_v1" if cached_imagenet_weights() else "none"
    if weights == "none":
        reporter.warn(
            "random_backbone",
            "no ImageNet ResNet-50 weights in the torch cache "
            f"({torch.hub.get_dir()}/checkpoints): the demo uses a random-init backbone "
            "(--weights none). Numbers show the pipeline works, not what ImageNet features reach.",
        )
    reporter.info(f"2/3 extract: frozen ResNet-50 ({weights}), {views} views, {input_size} px", code="stage")
    t0 = time.perf_counter()
    cache = out / "features.h5"
    summary = extract(
        data,
        cache,
        views=views,
        image_size=input_size,
        weights=weights,
        device=device,
        seed=seed,
        overwrite=True,
        reporter=reporter,
    )
    for line in describe(summary):
        reporter.info(line)
    seconds["extract"] = time.perf_counter() - t0

    reporter.info("3/3 train-head: patient-level 5-fold CV + holdout test, from the cache", code="stage")
    t0 = time.perf_counter()
    run = out / "run"
    config, protocol = apply_preset(DEFAULT_PRESET, {}, {})
    options = TrainOptions(folds=5, seed=seed, device=device, overwrite=True, **protocol)
    result = train_head(cache, run, config, options)
    seconds["train_head"] = time.perf_counter() - t0
    return DemoResult(out=out, weights=weights, cache=cache, run=run, seconds=seconds, result=result)


def finished_line(demo: DemoResult) -> str:
    """The demo's last line: where the time went and where the outputs are."""
    s = demo.seconds
    return (
        f"demo finished in {sum(s.values()):.0f} s (synth {s['synth']:.0f} s, extract {s['extract']:.0f} s, "
        f"train-head {s['train_head']:.1f} s); outputs in {demo.out}/"
    )
