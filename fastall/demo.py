"""`fastall demo`: synth -> extract -> train-head --folds 5 (the default preset, and its HTML report) on
built-in synthetic data, in under 2 minutes on 2 CPU cores (16 patients, 3 views at 224 px; measured 26 s on
an AVX512_BF16 EPYC and 47 s with AVX2 emulated: benchmarks/results/cli_time_cpu_*.json)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from rich.console import Console

from fastall.features.backbone import TORCHVISION_WEIGHTS
from fastall.system.events import Event, Reporter

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


def _print_warning(console: Console, event: Event) -> None:
    if event.kind == "warning":
        console.print(f"[yellow]Warning:[/] {event.text}", highlight=False, soft_wrap=True)


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
    console: Console | None = None,
) -> DemoResult:
    """Run the whole product once. Re-running reuses the synthetic data and the cache (extract resumes)."""
    from fastall.data.synth import synthesize
    from fastall.features.extract import extract
    from fastall.features.summary import describe
    from fastall.training.config import TrainOptions
    from fastall.training.presets import DEFAULT_PRESET, apply_preset
    from fastall.training.train_head import print_run_summary, train_head

    console = console or Console(stderr=True)
    out = Path(out)
    seconds: dict[str, float] = {}
    data = out / "data"
    t0 = time.perf_counter()
    if not (data / "C-NMC_Leukemia").is_dir():
        console.rule("[bold]1/3 synth[/]: synthetic C-NMC 2019 tree")
        made = synthesize(
            data,
            patients_per_class=patients_per_class,
            images_per_patient=images_per_patient,
            size=image_side,
            seed=seed,
        )
        console.print(f"{made.images} images of {made.patients} patients in {made.root}")
    else:
        console.rule("[bold]1/3 synth[/]: reusing the synthetic tree in " + str(data))
    seconds["synth"] = time.perf_counter() - t0

    weights = "imagenet1k_v1" if cached_imagenet_weights() else "none"
    if weights == "none":
        console.print(
            "[bold yellow]warning:[/] no ImageNet ResNet-50 weights in the torch cache "
            f"({torch.hub.get_dir()}/checkpoints): the demo uses a random-init backbone "
            "(--weights none). Numbers show the pipeline works, not what ImageNet features reach."
        )
    console.rule(f"[bold]2/3 extract[/]: frozen ResNet-50 ({weights}), {views} views, {input_size} px")
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
        reporter=Reporter(lambda e: _print_warning(console, e)),
    )
    for line in describe(summary):
        console.print(line, highlight=False)
    seconds["extract"] = time.perf_counter() - t0

    console.rule("[bold]3/3 train-head[/]: patient-level 5-fold CV + holdout test, from the cache")
    t0 = time.perf_counter()
    run = out / "run"
    config, protocol = apply_preset(DEFAULT_PRESET, {}, {})
    options = TrainOptions(folds=5, seed=seed, device=device, overwrite=True, **protocol)
    result = train_head(cache, run, config, options)
    seconds["train_head"] = time.perf_counter() - t0
    print_run_summary(result, console)
    total = sum(seconds.values())
    console.print(
        f"demo finished in {total:.0f} s (synth {seconds['synth']:.0f} s, extract "
        f"{seconds['extract']:.0f} s, train-head {seconds['train_head']:.1f} s); outputs in {out}/"
    )
    if result.report is not None:
        console.print(f"Report: {result.report.path}", highlight=False, soft_wrap=True)
    return DemoResult(out=out, weights=weights, cache=cache, run=run, seconds=seconds, result=result)
