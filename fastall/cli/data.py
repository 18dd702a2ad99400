"""`fastall scan` and `fastall synth`."""

from __future__ import annotations

from typing import Any

import click

from fastall.cli.group import _csv, cli, console, patients_option, positive_option, wide_console
from fastall.cli.options import apply, config_options
from fastall.data.synth_config import SynthConfig


@cli.command()
@click.argument("data", type=click.Path(file_okay=False, path_type=str))
@click.option("--patient-regex", default=None, help="Regex with one group that extracts the patient ID.")
@click.option("--include", default="prelim", show_default=True, help="Optional sources: prelim,testing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@patients_option
@positive_option
@click.option(
    "--inspect/--no-inspect",
    default=True,
    show_default=True,
    help="Read every file: byte-identical copies and image sizes (non-square images are stretched).",
)
def scan(
    data: str,
    patient_regex: str | None,
    include: str,
    as_json: bool,
    patients: str | None,
    positive: str | None,
    inspect: bool,
) -> None:
    """Count images and patients per class and source, name the positive class, and list every problem
    found: unreadable files, duplicates, non-square images."""
    import json

    from rich.markup import escape
    from rich.table import Table

    from fastall.data.discover import discover
    from fastall.data.inspect import inspect_records
    from fastall.data.positive import resolve_positive

    ds = discover(data, patient_regex=patient_regex, include=_csv(include), patients=patients)
    summary = ds.summary()
    chosen = resolve_positive(ds.class_names, positive) if ds.class_names else None
    summary["positive_class"] = chosen.record() if chosen else None
    found = inspect_records(ds.records) if inspect else None
    if found is not None:
        summary["inspection"] = found.to_json()
        summary["warnings"] += found.lines()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        out, names = wide_console(), summary["class_names"]
        table = Table(title=escape(f"{summary['root']} ({summary['layout']} layout)"))
        table.add_column("source")
        for c in names:
            table.add_column(f"{escape(c)} images", justify="right")
            table.add_column(f"{escape(c)} patients", justify="right")
        table.add_column("unlabelled", justify="right")
        for source, row in summary["per_source"].items():
            cells = [str(row[key][c]) for c in names for key in ("per_class", "patients_per_class")]
            table.add_row(escape(source), *cells, str(row["unlabelled"]))
        per_class = summary["per_class"]
        cells = [str(per_class[c][key]) for c in names for key in ("images", "patients")]
        table.add_row("[bold]total", *cells, str(summary["unlabelled_images"]))
        out.print(table)
        balance = ", ".join(
            f"{escape(c)} (label {v['label']}) {v['fraction']:.1%}" for c, v in per_class.items()
        )
        out.print(
            f"{summary['labelled_images']} labelled images of {summary['patients']} patients; "
            f"balance: {balance}"
        )
        if chosen is not None:
            out.print(f"positive class: {escape(chosen.message)}", highlight=False, soft_wrap=True)
        for warning in summary["warnings"]:
            out.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        if ds.problems:
            shown = 50
            problems = Table(title=f"{len(ds.problems)} problem(s), {summary['fatal_problems']} fatal")
            problems.add_column("file", overflow="fold")
            problems.add_column("problem", overflow="fold")
            problems.add_column("fatal")
            for p in ds.problems[:shown]:
                problems.add_row(escape(p.path), escape(p.message), "[red]yes" if p.fatal else "no")
            out.print(problems)
            if len(ds.problems) > shown:
                out.print(f"... and {len(ds.problems) - shown} more (--json lists them all)")
    ds.check(training=False)


@cli.command()
@click.argument("out", type=click.Path(path_type=str))
@apply(*config_options(SynthConfig))
def synth(out: str, **settings: Any) -> None:
    """Write a deterministic synthetic dataset: the C-NMC 2019 tree layout, or a generic K-class tree."""
    from fastall.cli.render import rich_reporter
    from fastall.data.synth import synthesize

    summary = synthesize(out, SynthConfig.of(**settings), reporter=rich_reporter(console))
    layout = summary.layout
    per = ", ".join(
        f"{s} " + " / ".join(f"{n[c]} {c}" for c in reversed(summary.class_names))
        for s, n in summary.per_source.items()
    )
    if layout == "generic":
        per = ", ".join(f"{n} {c}" for c, n in summary.patients_per_class.items()) + " patients"
    click.echo(
        f"wrote {summary.images} images of {summary.patients} patients ({per}) to {summary.root} "
        f"in {summary.seconds:.1f} s"
    )
    if summary.patient_regex:
        click.echo(f"patients are in the file names: use --patient-regex '{summary.patient_regex}'")
