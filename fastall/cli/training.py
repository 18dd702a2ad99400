"""`fastall train-head` and `fastall sweep`. The head options are generated from HeadConfig's fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from fastall.cli.group import cli, console, device_option, positive_option, results
from fastall.cli.options import apply
from fastall.cli.render import rich_reporter
from fastall.system.settings import HParam, hparams_of
from fastall.training.config import HeadConfig, TrainOptions
from fastall.training.grid import grid_help
from fastall.training.presets import DEFAULT_PRESET, PRESETS

TEST_CHOICES = click.Choice(["holdout", "prelim", "none"])


class _Optional(click.ParamType):
    """A number, or ``none`` to unset an optional hyperparameter."""

    def __init__(self, spec: HParam) -> None:
        self.spec, self.name = spec, f"{spec.kind.__name__}|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.spec.parse(value)
        except ValueError:
            self.fail(f"{value!r} is not {self.spec.expected} or none", param, ctx)


def head_options(config: type = HeadConfig, defaults: str = "paper") -> list[Callable]:
    """One click option per hyperparameter field of ``config``: ``--name`` (``--name/--no-name`` for a flag),
    its type or choices and help; unset, the value comes from ``--preset``."""
    options = []
    for p in hparams_of(config):
        decls = [f"{p.flag}/--no-{p.flag[2:]}"] if p.kind is bool else [p.flag]
        kind = click.Choice(list(p.choices)) if p.choices else _Optional(p) if p.optional else p.kind
        extra = {} if p.kind is bool else {"type": kind}
        help = f"{p.help} [default: from --preset; {defaults}: {p.default}]"
        options.append(click.option(*decls, default=None, help=help, **extra))
    return options


PRESET_OPTION = click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default=DEFAULT_PRESET,
    show_default=True,
    help="Protocol: " + "; ".join(f"{p.name}, {p.summary}" for p in PRESETS.values()) + ".",
)


def preset_config(preset: str, kwargs: dict[str, Any]) -> tuple[HeadConfig, dict[str, Any]]:
    """The head configuration and protocol of ``--preset``, with the head and protocol options given on the
    command line on top (popped out of ``kwargs``)."""
    from fastall.training.presets import apply_preset

    protocol = _explicit(
        kwargs, [n for n in ("train_views", "selection", "inner_folds", "head_init", "choose") if n in kwargs]
    )
    return apply_preset(preset, _explicit(kwargs, [p.name for p in HeadConfig.hparams()]), protocol)


def _explicit(kwargs: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Pop ``names`` out of a command's keyword arguments, keeping those given on the command line."""
    ctx = click.get_current_context()
    given = {}
    for name in names:
        value = kwargs.pop(name)
        if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT):
            given[name] = value
    return given


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
        device_option,
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
@apply(
    click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Run folder."),
    *_split_options("Test set: whole patients held out, the C-NMC prelim set, or none."),
    *head_options(),
    click.option(
        "--tta/--no-tta", default=False, show_default=True, help="Also report mean-over-views metrics."
    ),
    *_device_options("run"),
    click.option("--dedupe", is_flag=True, help="Keep one copy of byte-identical images (content hashes)."),
    PRESET_OPTION,
    click.option(
        "--train-views",
        type=click.Choice(["augmented", "all"]),
        default=None,
        help="Views the head trains on (and standardises with): the augmented ones, or all with view 0 "
        "[default: from --preset].",
    ),
    click.option(
        "--selection",
        type=click.Choice(["inner", "fold"]),
        default=None,
        help="Early stopping and plateau schedule on an inner split of the training patients, or on the "
        "reported fold (optimistic) [default: from --preset].",
    ),
    click.option(
        "--inner-folds",
        type=click.IntRange(1, 20),
        default=None,
        help="With --selection inner: 1, one inner split (about a fifth of the training patients), or an "
        "inner k-fold whose heads' median schedule is kept [default: from --preset].",
    ),
    click.option(
        "--head-init",
        type=click.Choice(["random", "probe"]),
        default=None,
        help="With --selection inner: start each head at random (nn.Linear's init), or as the linear probe "
        "fitted on its own training rows [default: from --preset].",
    ),
    click.option(
        "--model-choice/--no-model-choice",
        "choose",
        default=None,
        help="With --selection inner: per fold, keep the linear probe or the MLP, whichever an inner "
        "patient-grouped K-fold CV of the training patients scores higher [default: from --preset].",
    ),
    click.option(
        "--tune",
        default=None,
        metavar="GRID",
        help="Nested CV: the inner split chooses among these configurations per fold, the outer folds report "
        "(grammar of sweep --grid, e.g. 'lr=1e-4,1e-3 weight_decay=0,1e-2').",
    ),
    click.option(
        "--precision",
        type=click.Choice(["auto", "fp32", "bf16"]),
        default="auto",
        show_default=True,
        help="Training compute precision: auto is bf16 only where the device computes it natively.",
    ),
    click.option(
        "--probe/--no-probe",
        default=True,
        show_default=True,
        help="Fit the linear-probe baseline on the same folds (the number to beat).",
    ),
    positive_option,
)
def train_head_cmd(cache: str, out: str, preset: str, **given: Any) -> None:
    """Patient-level k-fold CV of the head from the feature cache, with test metrics and the linear-probe
    baseline, in seconds."""
    from fastall.reporting.tables import print_run
    from fastall.training.train_head import train_head

    config, protocol = preset_config(preset, given)  # the rest of ``given``: TrainOptions fields
    options = TrainOptions(**given, **protocol)
    result = train_head(cache, out, config, options, reporter=rich_reporter(console, warnings=False))
    print_run(result.metrics, result.out, results, result.report)


@cli.command(name="sweep")
@click.argument("cache", type=click.Path(dir_okay=False, path_type=str))
@apply(
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
    click.option(
        "--preset",
        type=click.Choice(list(PRESETS)),
        default="paper",
        show_default=True,
        help="The protocol every configuration trains with (train-head's presets): paper, selection on the "
        "reported fold (fast, optimistic); default, train-head's default (selection on an inner split, the "
        "head started as the probe), one configuration after another.",
    ),
    click.option(
        "--probe/--no-probe",
        default=True,
        show_default=True,
        help="Fit the linear probe on the same folds: the row every configuration has to beat.",
    ),
    positive_option,
)
def sweep_cmd(
    cache: str, out: str, grid: str | None, random_n: int | None, metric: str, preset: str, **given: Any
) -> None:
    """Train many head configurations on the same patient-level folds at once, ranked by a metric, beside
    the linear probe on the same folds."""
    from fastall.reporting.tables import print_sweep
    from fastall.training.presets import apply_preset
    from fastall.training.sweep import sweep

    base, protocol = apply_preset(preset, {}, {})
    options = TrainOptions(**given, **protocol)  # given: TrainOptions fields
    reporter = rich_reporter(console)
    result = sweep(
        cache, out, grid=grid, random=random_n, metric=metric, options=options, base=base, reporter=reporter
    )
    print_sweep(result.results, result.out, results, result.report)
