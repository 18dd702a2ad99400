"""`fastall export`: one deployment file, PyTorch or ONNX."""

from __future__ import annotations

import click

from fastall.cli.group import cli, console, weights_path_option
from fastall.cli.render import rich_reporter
from fastall.errors import FastallError


@cli.command(name="export")
@click.argument("run", type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str), help="Model file.")
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]),
    default="auto",
    show_default=True,
    help="CPU precision of the deployed model; auto: the fastest that agrees "
    "with fp32 on >= 99.5% of the run's images (int8, bf16, else fp32).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["torch", "onnx"]),
    default="torch",
    show_default=True,
    help="torch: one fastall model file; onnx: uint8 pixels -> probabilities for ONNX Runtime "
    "(fp32, checked against PyTorch; needs the extra: pip install 'fastall[onnx]').",
)
@click.option(
    "--images",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Run images the precision is checked on.",
)
@click.option(
    "--data",
    default=None,
    type=click.Path(file_okay=False, path_type=str),
    help="Data root of the run's images [the one recorded in the cache].",
)
@weights_path_option
def export_cmd(
    run: str, out: str, precision: str, fmt: str, images: int, data: str | None, weights_path: str | None
) -> None:
    """Write one self-contained model file (torch.load(weights_only=True), or ONNX) for deployment."""
    from fastall.inference.export import export_deployable

    if fmt == "onnx":
        _export_onnx(run, out, precision, images, data, weights_path)
        return
    path, choice = export_deployable(
        run,
        out,
        precision=precision,
        images=images,
        data=data,
        weights_path=weights_path,
        reporter=rich_reporter(console),
    )
    n = choice["images"]
    checked = f", {choice['agreement']:.1%} agreement on {n} images" if n else ""
    size = path.stat().st_size / 1e6
    click.echo(f"exported {run} -> {path} ({size:.1f} MB, {choice['precision']}{checked})")


def _export_onnx(
    run: str, out: str, precision: str, images: int, data: str | None, weights_path: str | None
) -> None:
    from fastall.inference.onnx_export import export_onnx

    if precision not in ("auto", "fp32"):
        raise FastallError(f"--format onnx writes an fp32 graph: --precision {precision} does not apply")
    path, check = export_onnx(
        run,
        out,
        images=images,
        data=data,
        weights_path=weights_path,
        reporter=rich_reporter(console),
    )
    size = path.stat().st_size / 1e6
    click.echo(
        f"exported {run} -> {path} ({size:.1f} MB, ONNX fp32, {check['agreement']:.1%} agreement with "
        f"PyTorch on {check['images']} images, max |Δprob| {check['max_dprob']:.2g})"
    )
