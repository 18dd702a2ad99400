"""`fastall extract`."""

from __future__ import annotations

import click

from fastall.cli.group import (
    _csv,
    cli,
    console,
    dist_timeout_option,
    distributed_option,
    patients_option,
    positive_option,
)
from fastall.errors import FastallError


@cli.command()
@click.argument("data", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str), help="Cache file.")
@click.option("--views", type=int, default=8, show_default=True, help="View 0 plain, views 1.. augmented.")
@click.option(
    "--image-size",
    type=int,
    default=None,
    help="Whole-image resize (no crop) [the weights' own size: 224 for most, 384 for efficientnet_v2_s].",
)
@click.option(
    "--backbone",
    default="resnet50",
    show_default=True,
    help="resnet18, resnet50, resnet101, densenet121, efficientnet_b0, efficientnet_v2_s, convnext_tiny, "
    "regnet_y_800mf, mobilenet_v3_large, swin_t, vit_b_16; dinobloom-s|b|l|g, dinov2-s|b, or timm:NAME "
    "(any timm model; extra fastall[timm]).",
)
@click.option(
    "--pool",
    type=click.Choice(["cls", "mean", "cls+mean"]),
    default=None,
    help="A ViT's token pooling: class token, mean of the patch tokens, or both concatenated "
    "[the preset's; else cls].",
)
@click.option(
    "--layers",
    default=None,
    help="CNN stages to pool and concatenate, e.g. layer3 or layer3,layer4 [the last map only].",
)
@click.option(
    "--weights",
    default=None,
    help="The backbone's torchvision weights (DEFAULT, IMAGENET1K_V1, ...; resnet50 also imagenet1k_v1/v2), "
    "hub (a timm encoder's pretrained weights: Hugging Face cache or download), a .pth/.safetensors state "
    "dict, or none (random init, tests only) [resnet50: imagenet1k_v1, timm: hub, others: DEFAULT].",
)
@click.option("--device", default="auto", show_default=True, help="auto, cuda or cpu.")
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="auto: bf16 where the device computes it natively (GPU; CPU with avx512_bf16/AMX), else fp32.",
)
@click.option("--amp/--no-amp", default=None, help="Older alias: --amp is --precision bf16, --no-amp fp32.")
@click.option(
    "--amp-dtype", type=click.Choice(["bf16", "fp16"]), default=None, help="Older alias of --precision."
)
@click.option(
    "--batch-size", type=int, default=None, help="Images per forward [GPU: sized from free memory; CPU: 32]."
)
@click.option("--workers", type=int, default=None, help="Decoding processes [up to 10 on GPU, 0 on CPU].")
@click.option("--seed", type=int, default=0, show_default=True, help="Augmentation (and random-init) seed.")
@click.option(
    "--fill",
    default="auto",
    show_default=True,
    help="Corners uncovered by rotation/zoom: auto (black on a black border, else the median border colour), "
    "black, reflect, edge, median or constant:R,G,B.",
)
@click.option("--include", default=None, help="Optional sources, e.g. prelim,testing [prelim].")
@click.option("--overwrite", is_flag=True, help="Replace a cache or partial work made with other settings.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images (listed in the cache), don't stop.")
@click.option("--patient-regex", default=None, help="Regex with one group that extracts the patient ID.")
@click.option(
    "--update",
    is_flag=True,
    help="Recompute images whose file changed since they were cached (refused without it); keep the rest.",
)
@click.option(
    "--verify-content",
    is_flag=True,
    help="Hash every image file to find changes, not only those whose size or mtime changed.",
)
@click.option(
    "--scratch",
    default=None,
    type=click.Path(file_okay=False, path_type=str),
    help="Keep unfinished work (shards) in this folder, e.g. node-local disk [beside --out].",
)
@patients_option
@positive_option
@distributed_option
@dist_timeout_option
def extract(
    data: str,
    out: str,
    views: int,
    image_size: int | None,
    backbone: str,
    pool: str | None,
    layers: str | None,
    weights: str | None,
    device: str,
    precision: str,
    amp: bool | None,
    amp_dtype: str | None,
    batch_size: int | None,
    workers: int | None,
    seed: int,
    fill: str,
    include: str | None,
    overwrite: bool,
    skip_bad: bool,
    patient_regex: str | None,
    update: bool,
    verify_content: bool,
    scratch: str | None,
    patients: str | None,
    positive: str | None,
    distributed: bool | None,
    dist_timeout: float,
) -> None:
    """Compute frozen backbone features of V views per image into a crash-safe, resumable HDF5 cache.

    Under `torchrun --nproc_per_node N -m fastall extract ...` every process extracts a share and rank 0
    writes the one cache (docs/scale.md).
    """
    from functools import partial

    from fastall.features.extract import extract as run_extract
    from fastall.features.summary import describe
    from fastall.system.distributed import detect

    env = detect(distributed)
    content = {"update": update, "verify_content": verify_content}
    if env is not None:
        from fastall.features.distributed import extract_distributed

        if update or verify_content:
            raise FastallError("--update and --verify-content run in one process: start extract alone")
        run_extract, content = partial(extract_distributed, env=env, timeout=dist_timeout), {}
    summary = run_extract(
        data,
        out,
        views=views,
        image_size=image_size,
        weights=weights,
        backbone=backbone,
        pool=pool,
        layers=layers,
        device=device,
        precision=precision,
        amp=amp,
        amp_dtype=amp_dtype,
        batch_size=batch_size,
        workers=workers,
        seed=seed,
        fill=fill,
        include=_csv(include),
        overwrite=overwrite,
        skip_bad=skip_bad,
        patient_regex=patient_regex,
        patients=patients,
        positive=positive,
        **content,
        progress=True,
        warn=lambda msg: console.print(f"[yellow]Warning:[/] {msg}", highlight=False, soft_wrap=True),
        scratch=scratch,
    )
    if env is None or env.is_main:
        for line in describe(summary):
            click.echo(line)
