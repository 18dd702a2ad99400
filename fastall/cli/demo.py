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
    from fastall.cli.render import rich_reporter
    from fastall.demo import finished_line, run_demo
    from fastall.reporting.tables import print_run

    demo = run_demo(out, device=device, seed=seed, reporter=rich_reporter(console))
    run = demo.result
    print_run(run.metrics, run.out, console, run.report)
    console.print(finished_line(demo), highlight=False, soft_wrap=True)
    if run.report is not None:
        console.print(f"Report: {run.report.path}", highlight=False, soft_wrap=True)
