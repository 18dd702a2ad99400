"""`fastall explain`: class activation maps of a run's predictions, with an offline HTML page."""

from __future__ import annotations

import click

from fastall.cli.group import cli, console, device_option, weights_path_option


@cli.command()
@click.argument("run", type=click.Path(path_type=str))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Output folder.")
@click.option(
    "--method",
    default="gradcam",
    show_default=True,
    help="gradcam, gradcam++ or layercam (pytorch-grad-cam).",
)
@click.option(
    "--target",
    default="predicted",
    show_default=True,
    help="The class whose evidence is mapped: predicted, or a class of the run (e.g. all, hem).",
)
@device_option
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option(
    "--data",
    default=None,
    type=click.Path(file_okay=False, path_type=str),
    help="Data root for relative PATHS, as the run's predictions.csv names them [the cache's].",
)
@weights_path_option
@click.option("--overwrite", is_flag=True, help="Replace a complete explain folder at --out.")
def explain(
    run: str,
    paths: tuple[str, ...],
    out: str,
    method: str,
    target: str,
    device: str,
    batch_size: int,
    data: str | None,
    weights_path: str | None,
    overwrite: bool,
) -> None:
    """Grad-CAM maps per image (files, or folders searched recursively): originals, overlays, raw maps,
    explain.csv and a self-contained index.html; RUN or model.pt."""
    from fastall.cli.render import rich_reporter
    from fastall.inference.explain import cam_class, explain_paths, load_explainable, target_index

    cam_class(method)
    model = load_explainable(run, device=device, weights_path=weights_path)
    target_index(model, target)
    result = explain_paths(
        model,
        paths,
        out,
        method=method,
        target=target,
        batch_size=batch_size,
        data=data,
        overwrite=overwrite,
        reporter=rich_reporter(console),
    )
    n, bad = len(result.rows), len(result.skipped)
    click.echo(f"{n} image{'s' * (n != 1)} explained ({method}) -> {out}/index.html, {out}/explain.csv")
    if bad:
        click.echo(f"{bad} unreadable file{'s' * (bad != 1)} skipped, listed in {out}/skipped.csv")
