"""`fastall compare`: the same folds, head and patients for every backbone's cache, ranked and paired."""

from __future__ import annotations

import click
from rich.console import Console

from fastall.cli.group import cli, console


@cli.command(name="compare")
@click.argument("caches", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Compare folder.")
@click.option("--folds", type=int, default=5, show_default=True, help="Patient-level CV folds.")
@click.option(
    "--test",
    type=click.Choice(["holdout", "prelim", "none"]),
    default="holdout",
    show_default=True,
    help="Test set: whole patients held out, the C-NMC prelim set, or none.",
)
@click.option("--holdout", type=float, default=0.1, show_default=True, help="Fraction of images held out.")
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Adam learning rate.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True, help="Adam L2 weight decay.")
@click.option("--dropout", type=float, default=0.5, show_default=True)
@click.option("--hidden", type=int, default=512, show_default=True)
@click.option("--patience", type=int, default=None, help="Early stopping on validation loss (best kept).")
@click.option("--plateau-factor", type=float, default=0.1, show_default=True, help="ReduceLROnPlateau factor")
@click.option("--plateau-patience", type=int, default=2, show_default=True, help="ReduceLROnPlateau patience")
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), default="none", show_default=True)
@click.option(
    "--standardize/--no-standardize",
    default=True,
    show_default=True,
    help="Standardise features with training-fold statistics (stored in the head).",
)
@click.option("--tta/--no-tta", default=False, show_default=True, help="Also report mean-over-views metrics.")
@click.option(
    "--sweep",
    "grid",
    default=None,
    help="Instead of one head configuration: the best of this sweep grid per backbone (as `fastall sweep "
    "--grid`), e.g. 'lr=1e-4,1e-3 dropout=0.3,0.5'.",
)
@click.option("--bootstrap", type=int, default=2000, show_default=True, help="Patient bootstrap replicates.")
@click.option("--latency", is_flag=True, help="Also time each end-to-end model at batch 1 on --device.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing compare folder.")
def compare_cmd(
    caches: tuple[str, ...],
    out: str,
    folds: int,
    test: str,
    holdout: float,
    grid: str | None,
    bootstrap: int,
    latency: bool,
    seed: int,
    device: str,
    tta: bool,
    overwrite: bool,
    **head: object,
) -> None:
    """Rank backbones by caches of one dataset: the same patient-level folds and head, a paired bootstrap."""
    from fastall.errors import FastallError
    from fastall.reporting.compare import print_comparison
    from fastall.training.compare import CompareOptions, add_costs, compare_caches
    from fastall.training.config import HeadConfig

    if bootstrap < 100:
        raise FastallError(f"--bootstrap {bootstrap}: use at least 100 replicates")
    options = CompareOptions(
        folds=folds,
        test=test,
        holdout=holdout,
        seed=seed,
        device=device,
        tta=tta,
        sweep=grid,
        n_boot=bootstrap,
    )
    result = compare_caches(
        caches, out, config=HeadConfig(**head), options=options, overwrite=overwrite, console=console
    )
    if latency:
        from fastall.inference.costs import run_costs

        runs = {e["name"]: result.out / e["run"] for e in result.backbones}
        log = lambda msg: console.print(f"[dim]{msg}[/]", highlight=False)  # noqa: E731
        add_costs(result, run_costs(runs, device=device, log=log))
    print_comparison(result.results, result.out, Console())
