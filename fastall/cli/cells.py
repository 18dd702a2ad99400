"""From whole smears: `fastall cells` (find, crop leukocytes) and `fastall screen` (and classify, count)."""

from __future__ import annotations

import click

from fastall.cli.group import cli, console, device_option, weights_path_option
from fastall.cli.render import rich_reporter

method_option = click.option(
    "--method",
    type=click.Choice(["stain", "cellpose"]),
    default="stain",
    show_default=True,
    help="stain: classical colour deconvolution, threshold, watershed (no weights); cellpose: the extra.",
)


@cli.command()
@click.argument("smears", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Cells folder.")
@method_option
@click.option(
    "--margin",
    type=float,
    default=0.15,
    show_default=True,
    help="Added on each side of a cell's box, as a fraction of its longer side.",
)
@click.option(
    "--boxes",
    default=None,
    type=click.Path(path_type=str),
    help="Annotated leukocyte boxes (CSV image,xmin,ymin,xmax,ymax or a Pascal VOC folder): score detection.",
)
@click.option("--overwrite", is_flag=True, help="Replace a complete cells folder at --out.")
def cells(
    smears: tuple[str, ...], out: str, method: str, margin: float, boxes: str | None, overwrite: bool
) -> None:
    """Find the leukocytes of smear images (files, folders); crop each into OUT/<smear>/<smear>_<k>.png."""
    from fastall.data.smears import CropConfig
    from fastall.inference.cells import run_cells

    result = run_cells(
        list(smears),
        out,
        CropConfig(method, margin=margin),
        boxes=boxes,
        overwrite=overwrite,
        reporter=rich_reporter(console),
    )
    click.echo(f"{result.cells} cells from {len(result.smears)} images -> {out} (cells.csv, index.html)")
    if result.detection is not None:
        for iou, m in result.detection["by_iou"].items():
            click.echo(
                f"IoU ≥ {iou}: precision {m['precision']['value']:.3f}, recall {m['recall']['value']:.3f}, "
                f"F1 {m['f1']['value']:.3f} -> {out}/detection.json"
            )


@cli.command()
@click.argument("run", type=click.Path(path_type=str))
@click.argument("smears", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Screen folder.")
@click.option(
    "--patients",
    default=None,
    type=click.Path(dir_okay=False, path_type=str),
    help="CSV path,patient (paths relative to the smears folder) [every smear its own patient].",
)
@method_option
@click.option("--margin", type=float, default=None, help="Crop margin [the run's training cell scale].")
@device_option
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]),
    default="auto",
    show_default=True,
    help="auto: the fastest precision that agrees with fp32 on this device (as predict chooses).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=int, default=None, help="Decoding processes [0 on CPU, most cores on GPU].")
@weights_path_option
@click.option("--overwrite", is_flag=True, help="Replace a complete screen folder at --out.")
def screen(
    run: str,
    smears: tuple[str, ...],
    out: str,
    patients: str | None,
    method: str,
    margin: float | None,
    device: str,
    precision: str,
    batch_size: int,
    workers: int | None,
    weights_path: str | None,
    overwrite: bool,
) -> None:
    """Find, classify and count leukocytes of smear images with RUN's end-to-end model."""
    from fastall.inference.screen import ScreenConfig
    from fastall.inference.screen import screen as run_screen

    config = ScreenConfig(
        method=method,
        margin=margin,
        device=device,
        precision=precision,
        batch_size=batch_size,
        workers=workers,
        weights_path=weights_path,
        patients=patients,
        overwrite=overwrite,
    )
    result = run_screen(run, list(smears), out, config, rich_reporter(console))
    s = result.summary
    flagged = sum(r["flag"] for r in result.patient_rows)
    click.echo(
        f"{s['cells']} leukocytes in {s['smears']} images, {len(result.patient_rows)} patients "
        f"({flagged} flagged) in {s['seconds']['total']:.1f} s ({s['precision']}) -> {out}"
    )
    if s["cut"].get("cut") is None:
        click.echo(f"note: no flag: {s['cut']['why']}")
