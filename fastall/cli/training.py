"""`fastall train-head` and `fastall sweep`. The head options are generated from HeadConfig's fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from fastall.cli.group import cli, console
from fastall.training.config import HeadConfig, TrainOptions
from fastall.training.grid import grid_help
from fastall.training.hparams import hparams_of

TEST_CHOICES = click.Choice(["holdout", "prelim", "none"])
DEVICE_HELP = "auto, cpu, cuda or cuda:N."


def _apply(*decorators: Callable) -> Callable:
    """Apply click decorators so that the options list in the order given."""

    def wrap(fn: Callable) -> Callable:
        for deco in reversed(decorators):
            fn = deco(fn)
        return fn

    return wrap


def head_options(config: type = HeadConfig) -> list[Callable]:
    """One click option per hyperparameter field of ``config``: ``--name`` (``--name/--no-name`` for a flag),
    its type or choices, default and help."""
    options = []
    for p in hparams_of(config):
        decls = [f"{p.flag}/--no-{p.flag[2:]}"] if p.kind is bool else [p.flag]
        kind = click.Choice(list(p.choices)) if p.choices else p.kind
        extra = {} if p.kind is bool else {"type": kind}
        options.append(click.option(*decls, default=p.default, show_default=True, help=p.help, **extra))
    return options


def _head_config(kwargs: dict[str, Any]) -> HeadConfig:
    """Pop the HeadConfig fields out of a command's keyword arguments."""
    return HeadConfig(**{p.name: kwargs.pop(p.name) for p in HeadConfig.hparams()})


def _split_options(test_help: str) -> list[Callable]:
    return [
        click.option("--folds", type=int, default=5, show_default=True, help="Patient-level CV folds."),
        click.option("--test", type=TEST_CHOICES, default="holdout", show_default=True, help=test_help),
        click.option(
            "--holdout", type=float, default=0.1, show_default=True, help="Fraction of images held out."
        ),
    ]


def _device_options(what: str) -> list[Callable]:
    return [
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True, help=DEVICE_HELP),
        click.option("--overwrite", is_flag=True, help=f"Replace an existing {what} folder."),
        click.option(
            "--report/--no-report",
            default=True,
            show_default=True,
            help="Write the HTML report (figures, CIs, provenance) into OUT/report/.",
        ),
    ]


@cli.command(name="train-head")
@click.argument("cache", type=click.Path(dir_okay=False, path_type=str))
@_apply(
    click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Run folder."),
    *_split_options("Test set: whole patients held out, the C-NMC prelim set, or none."),
    *head_options(),
    click.option(
        "--tta/--no-tta", default=False, show_default=True, help="Also report mean-over-views metrics."
    ),
    *_device_options("run"),
)
def train_head_cmd(
    cache: str,
    out: str,
    folds: int,
    test: str,
    holdout: float,
    tta: bool,
    seed: int,
    device: str,
    overwrite: bool,
    report: bool,
    **head: Any,
) -> None:
    """Patient-level k-fold CV of the head from the feature cache, with test metrics, in seconds."""
    from fastall.training.train_head import print_run_summary, train_head

    options = TrainOptions(
        folds=folds,
        test=test,
        holdout=holdout,
        tta=tta,
        seed=seed,
        device=device,
        overwrite=overwrite,
        report=report,
        console=console,
    )
    result = train_head(cache, out, _head_config(head), options)
    print_run_summary(result, console)


@cli.command(name="sweep")
@click.argument("cache", type=click.Path(dir_okay=False, path_type=str))
@_apply(
    click.option(
        "--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Sweep folder."
    ),
    click.option(
        "--grid",
        default=None,
        help="name=v1,v2 ... (full product); with --random, name=low:high ranges too. "
        f"Names (type; default): {grid_help()}.",
    ),
    click.option(
        "--random", "random_n", type=int, default=None, help="Sample N configurations from the grid."
    ),
    click.option("--folds", type=int, default=5, show_default=True, help="Patient-level CV folds."),
    click.option("--metric", type=click.Choice(["auc", "accuracy", "f1"]), default="auc", show_default=True),
    *_split_options("Test set left out of the sweep (as in train-head).")[1:],
    *_device_options("sweep"),
)
def sweep_cmd(
    cache: str,
    out: str,
    grid: str | None,
    random_n: int | None,
    folds: int,
    metric: str,
    test: str,
    holdout: float,
    seed: int,
    device: str,
    overwrite: bool,
    report: bool,
) -> None:
    """Train many head configurations on the same patient-level folds at once, ranked by a metric."""
    from fastall.training.sweep import print_sweep, sweep

    options = TrainOptions(
        folds=folds,
        test=test,
        holdout=holdout,
        seed=seed,
        device=device,
        overwrite=overwrite,
        report=report,
        console=console,
    )
    result = sweep(cache, out, grid=grid, random=random_n, metric=metric, options=options)
    print_sweep(result, console)
