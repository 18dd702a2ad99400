"""`fastall report`."""

from __future__ import annotations

import click
from rich.markup import escape

from fastall.cli.group import cli, console, positive_option


@cli.command(name="report")
@click.argument("run", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Where the run's images are now, if not where the cache recorded them (for the cell grids).",
)
@positive_option
def report_cmd(run: str, data: str | None, positive: str | None) -> None:
    """Remake RUN/report/index.html (one self-contained page: figures, metrics with CIs, provenance) from a
    train-head, sweep or probe folder alone."""
    from pathlib import Path

    from fastall.reporting.probe_report import write_probe_report
    from fastall.reporting.run_report import write_report

    if (Path(run) / "probe.json").is_file():
        made = write_probe_report(run)
    else:
        made = write_report(run, data, positive=positive)
    for note in made.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    n = len(made.figures)
    console.print(f"{n} figure{'s' * (n != 1)}; report: {made.path}", highlight=False, soft_wrap=True)
