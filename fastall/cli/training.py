"""`fastall train-head` and `fastall sweep`."""

from __future__ import annotations

import click

from fastall.cli.group import cli, console


@cli.command(name="train-head")
@click.argument("cache", type=click.Path(dir_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Run folder.")
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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
@click.option("--dedupe", is_flag=True, help="Keep one copy of byte-identical images (content hashes).")
def train_head_cmd(
    cache: str,
    out: str,
    folds: int,
    test: str,
    holdout: float,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    dropout: float,
    hidden: int,
    patience: int | None,
    plateau_factor: float,
    plateau_patience: int,
    class_weight: str,
    standardize: bool,
    tta: bool,
    seed: int,
    device: str,
    overwrite: bool,
    dedupe: bool,
) -> None:
    """Patient-level k-fold CV of the head from the feature cache, with test metrics, in seconds."""
    from fastall.training.train_head import print_run_summary, train_head

    result = train_head(
        cache,
        out,
        folds=folds,
        test=test,
        holdout=holdout,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        dropout=dropout,
        hidden=hidden,
        patience=patience,
        plateau_factor=plateau_factor,
        plateau_patience=plateau_patience,
        class_weight=class_weight,
        standardize=standardize,
        tta=tta,
        seed=seed,
        device=device,
        overwrite=overwrite,
        console=console,
        dedupe=dedupe,
    )
    print_run_summary(result, console)


@cli.command(name="sweep")
@click.argument("cache", type=click.Path(dir_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Sweep folder.")
@click.option(
    "--grid",
    default=None,
    help="name=v1,v2 ... (full product); with --random, name=low:high ranges too. "
    "Names: lr weight_decay dropout hidden epochs batch_size patience plateau_factor "
    "plateau_patience class_weight standardize.",
)
@click.option("--random", "random_n", type=int, default=None, help="Sample N configurations from the grid.")
@click.option("--folds", type=int, default=5, show_default=True, help="Patient-level CV folds.")
@click.option("--metric", type=click.Choice(["auc", "accuracy", "f1"]), default="auc", show_default=True)
@click.option(
    "--test",
    type=click.Choice(["holdout", "prelim", "none"]),
    default="holdout",
    show_default=True,
    help="Test set left out of the sweep (as in train-head).",
)
@click.option("--holdout", type=float, default=0.1, show_default=True, help="Fraction of images held out.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing sweep folder.")
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
) -> None:
    """Train many head configurations on the same patient-level folds at once, ranked by a metric."""
    from fastall.training.sweep import print_sweep, sweep

    result = sweep(
        cache,
        out,
        grid=grid,
        random=random_n,
        folds=folds,
        metric=metric,
        test=test,
        holdout=holdout,
        seed=seed,
        device=device,
        overwrite=overwrite,
        console=console,
    )
    print_sweep(result, console)
