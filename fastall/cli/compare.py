"""`fastall compare`: the same folds, head and patients for every backbone's cache, ranked and paired."""

from __future__ import annotations

from typing import Any

import click

from fastall.cli.group import cli, console, device_option, positive_option, wide_console
from fastall.cli.options import apply
from fastall.cli.training import (
    PRESET_OPTION,
    _split_options,
    head_options,
    preset_config,
)


@cli.command(name="compare")
@click.argument("caches", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=str))
@apply(
    click.option(
        "--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Compare folder."
    ),
    *_split_options("Test set, the same for every backbone: patients held out, the prelim set, or none."),
    PRESET_OPTION,
    *head_options(),
    click.option(
        "--tta/--no-tta", default=False, show_default=True, help="Also report mean-over-views metrics."
    ),
    click.option(
        "--sweep",
        "grid",
        default=None,
        help="Instead of one head configuration: the best of this grid per backbone (as `fastall sweep "
        "--grid`), e.g. 'lr=1e-4,1e-3 dropout=0.3,0.5'.",
    ),
    click.option(
        "--resamples", type=int, default=1000, show_default=True, help="Patient bootstrap resamples."
    ),
    click.option("--latency", is_flag=True, help="Also time each end-to-end model at batch 1 on --device."),
    click.option("--seed", type=int, default=0, show_default=True),
    device_option,
    click.option("--overwrite", is_flag=True, help="Replace an existing compare folder."),
    positive_option,
)
def compare_cmd(
    caches: tuple[str, ...],
    out: str,
    grid: str | None,
    resamples: int,
    latency: bool,
    overwrite: bool,
    preset: str,
    **given: Any,
) -> None:
    """Rank backbones by caches of one dataset: the same patient-level folds and head, a paired bootstrap."""
    from fastall.cli.render import rich_reporter
    from fastall.errors import FastallError
    from fastall.reporting.backbone_table import print_comparison
    from fastall.training.config import TrainOptions
    from fastall.training.rank_backbones import CompareOptions, add_costs, compare_caches

    if resamples < 100:
        raise FastallError(f"--resamples {resamples}: use at least 100")
    config, protocol = preset_config(preset, given)  # the rest of ``given``: TrainOptions fields
    run = TrainOptions(**given, **protocol)
    options = CompareOptions(run=run, sweep=grid, resamples=resamples)
    reporter = rich_reporter(console)
    result = compare_caches(
        caches, out, config=config, options=options, overwrite=overwrite, reporter=reporter
    )
    if latency:
        from fastall.inference.costs import run_costs

        runs = {e["name"]: result.out / e["run"] for e in result.backbones}
        add_costs(result, run_costs(runs, device=run.device, reporter=reporter))
    print_comparison(result.results, result.out, wide_console())
