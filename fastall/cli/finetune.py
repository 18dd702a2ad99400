"""`fastall finetune`: the stage after the cut and the head, from a maps store (options: FinetuneConfig)."""

from __future__ import annotations

from typing import Any

import click

from fastall.cli.group import cli, console, positive_option, results
from fastall.cli.options import apply
from fastall.cli.render import rich_reporter
from fastall.cli.training import _device_options, _explicit, _split_options, head_options
from fastall.finetune.config import FINETUNE_PRESETS, FinetuneConfig, finetune_preset
from fastall.training.config import TrainOptions


@cli.command(name="finetune")
@click.argument("store", type=click.Path(dir_okay=False, path_type=str))
@apply(
    click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Run folder."),
    *_split_options("Test set: whole patients held out, the C-NMC prelim set, or none."),
    click.option(
        "--train",
        default=None,
        help="The stages to train: those after the store's cut [layer4 for a layer3 store, layer3,layer4 "
        "for a layer2 one].",
    ),
    click.option(
        "--preset",
        type=click.Choice(list(FINETUNE_PRESETS)),
        default="default",
        show_default=True,
        help="Protocol: " + "; ".join(f"{p.name}, {p.summary}" for p in FINETUNE_PRESETS.values()) + ".",
    ),
    *head_options(FinetuneConfig, defaults="default"),
    click.option(
        "--tune",
        default=None,
        metavar="GRID",
        help="Nested CV: the inner split chooses among these configurations (sweep --grid's grammar over the "
        "options above, e.g. 'lr=1e-4,3e-4 stage_lr=0.1,0.3').",
    ),
    click.option("--weights-path", default=None, help="The backbone weights file, where it moved."),
    click.option(
        "--probe/--no-probe", default=True, show_default=True, help="Fit the linear-probe baseline."
    ),
    *_device_options("run"),
    positive_option,
)
def finetune_cmd(
    store: str, out: str, train: str | None, preset: str, weights_path: str | None, **given: Any
) -> None:
    """Fine-tune the backbone's stage after the cut and the head from cached maps (`extract --maps`), on
    train-head's patient-level folds, with the probe baseline."""
    from fastall.finetune.run import finetune
    from fastall.reporting.tables import print_run

    hparams = _explicit(given, [p.name for p in FinetuneConfig.hparams()])  # the rest: TrainOptions fields
    options = TrainOptions(**given, progress=False)
    config, _ = finetune_preset(preset, hparams)
    reporter = rich_reporter(console)
    result = finetune(
        store, out, config, options, preset=preset, train=train, weights_path=weights_path, reporter=reporter
    )
    print_run(result.metrics, result.out, results, result.report)
    ft = result.metrics["finetune"]
    results.print(
        f"fine-tuned {','.join(ft['trained'])} from {ft['maps']} maps ({ft['map_views']} views): stage lr "
        f"{ft['stage_lr']:g}, head lr {ft['head_lr']:g}, BatchNorm {ft['bn']}; stage sha256 "
        f"{ft['stage_sha256'][:16]}... in {result.out / 'head.pt'}",
        highlight=False,
        soft_wrap=True,
    )
