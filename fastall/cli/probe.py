"""`fastall probe`: the field's evaluation protocols on a feature cache, on train-head's folds."""

from __future__ import annotations

import click

from fastall.cli.group import cli, console, device_option, positive_option
from fastall.cli.options import apply
from fastall.cli.training import _split_options


def _ks(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: expected comma-separated whole numbers, e.g. 1,5,20,50"
        ) from None
    if not ks or min(ks) < 1:
        raise click.BadParameter(f"{value!r}: every k must be at least 1")
    return tuple(sorted(set(ks)))


@cli.command(name="probe")
@click.argument("cache", type=click.Path(dir_okay=False, path_type=str))
@apply(
    click.option(
        "--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Probe folder."
    ),
    *_split_options("Test set (as train-head): whole patients held out, the C-NMC prelim set, or none."),
    click.option("--seed", type=int, default=0, show_default=True, help="Splits and draws (as train-head)."),
    device_option,
    click.option("--ks", default="1,5,20,50", show_default=True, help="kNN neighbour counts."),
    click.option(
        "--temperature", type=click.FloatRange(min=1e-4), default=0.07, show_default=True,
        help="Temperature of the weighted kNN vote, exp(similarity / T).",
    ),
    click.option(
        "--draws", type=click.IntRange(1, 100), default=5, show_default=True,
        help="Seeded draws per label-efficiency size.",
    ),
    click.option(
        "--fixed-c", type=click.FloatRange(min=1e-8, max=1e8), default=0.1, show_default=True,
        help="C of the fixed-C linear reference (and of the label-efficiency linear probes).",
    ),
    click.option(
        "--inner-folds", type=click.IntRange(2, 20), default=5, show_default=True,
        help="Inner patient-grouped CV folds that choose the linear probe's C.",
    ),
    click.option("--mlp/--no-mlp", default=True, show_default=True, help="Also the default train-head MLP."),
    click.option("--map/--no-map", "embedding", default=True, show_default=True, help="The 2-D map."),
    click.option("--dedupe", is_flag=True, help="Keep one copy of byte-identical images (content hashes)."),
    click.option("--overwrite", is_flag=True, help="Replace an existing probe folder."),
    click.option("--report/--no-report", default=True, show_default=True, help="Write OUT/report/."),
    positive_option,
)  # fmt: skip
def probe_cmd(cache: str, out: str, ks: str, **options) -> None:
    """Linear, kNN and MLP probes, label-efficiency curves, the batch-effect score and an embedding map, on
    the same patient-level folds as train-head."""
    from fastall.cli.render import rich_reporter
    from fastall.reporting.probe_table import print_probe
    from fastall.training.protocols.run import ProbeOptions, probe

    result = probe(cache, out, ProbeOptions(ks=_ks(ks), **options), reporter=rich_reporter(console))
    print_probe(result.record, result.out, console, result.report)
