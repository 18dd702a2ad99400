"""`fastall demo`."""

from __future__ import annotations

import click

from fastall.cli.group import cli, console, device_option


@cli.command()
@click.option(
    "--out",
    default="fastall-demo",
    show_default=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Folder for the synthetic data, the cache and the run.",
)
@device_option
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out: str, device: str, seed: int) -> None:
    """synth -> extract -> train-head --folds 5 on built-in synthetic data, then the summary table."""
    from fastall.demo import run_demo

    run_demo(out, device=device, seed=seed, console=console)
