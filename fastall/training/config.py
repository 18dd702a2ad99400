"""What the training engine takes and returns: a head configuration and the run options, the data of a stack,
a trained head with its history."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from fastall.errors import FastallError
from fastall.system.seeds import check_seed
from fastall.system.settings import HParam, hparam, hparams_of, within

MAX_LR, MAX_WEIGHT_DECAY, MAX_HIDDEN, MAX_EPOCHS, MAX_BATCH = 1.0, 1.0, 65536, 10000, 65536


@dataclass(frozen=True)
class HeadConfig:
    """One head configuration: the train-head options that change training (the paper's by default).

    Each field is a :func:`~fastall.system.settings.hparam`; the CLI options, the sweep grid and the printed
    train-head command are generated from these declarations.
    """

    lr: float = hparam(
        1e-4,
        "Adam learning rate.",
        check=lambda v: 0 < v <= MAX_LR,
        rule=f"must be a finite number in (0, {MAX_LR:g}]",
        log=True,
    )
    weight_decay: float = hparam(
        0.0,
        "Adam L2 weight decay.",
        check=lambda v: 0 <= v <= MAX_WEIGHT_DECAY,
        rule=f"must be a finite number in [0, {MAX_WEIGHT_DECAY:g}]",
        log=True,
    )
    dropout: float = hparam(0.5, "Dropout before the output layer.", **within(0, 1, high_open=True))
    hidden: int = hparam(
        512,
        "Hidden units of the head.",
        **within(1, MAX_HIDDEN),
    )
    epochs: int = hparam(
        5,
        "Training epochs (the most, with --patience).",
        **within(1, MAX_EPOCHS),
    )
    batch_size: int = hparam(32, "Images per step.", **within(1, MAX_BATCH))
    min_steps: int | None = hparam(
        None,
        "Train at least this many optimiser steps: on small data the epochs grow to reach it (a ceiling with "
        "--patience).",
        **within(1, 10_000_000),
    )
    patience: int | None = hparam(
        None,
        "Early stopping on validation loss (best kept).",
        **within(1, MAX_EPOCHS),
    )
    min_delta: float = hparam(
        0.0,
        "Early stopping counts an epoch as better only when its validation loss is lower by this fraction.",
        **within(0, 1, high_open=True),
    )
    plateau_factor: float = hparam(0.1, "ReduceLROnPlateau factor.", **within(0, 1, low_open=True))
    plateau_patience: int = hparam(2, "ReduceLROnPlateau patience.", **within(0))
    class_weight: str = hparam(
        "none",
        "Loss weights: none, or balanced (inverse class frequency of the training fold).",
        choices=("none", "balanced"),
    )
    standardize: bool = hparam(
        True, "Standardise features with training-fold statistics (stored in the head)."
    )

    @staticmethod
    def hparams() -> tuple[HParam, ...]:
        return hparams_of(HeadConfig)

    def check(self) -> HeadConfig:
        for spec in self.hparams():
            problem = spec.problem(getattr(self, spec.name))
            if problem:
                raise FastallError(f"invalid head configuration: {problem}")
        return self

    @property
    def shape(self) -> tuple[int, int]:
        return (self.hidden, self.batch_size)

    def epoch_limit(self, steps_per_epoch: int) -> int:
        """The most epochs a head trains: ``epochs``, raised to reach ``min_steps`` (capped at MAX_EPOCHS)."""
        if self.min_steps is None:
            return self.epochs
        return min(MAX_EPOCHS, max(self.epochs, -(-self.min_steps // max(1, steps_per_epoch))))


@dataclass(frozen=True)
class TrainOptions:
    """How a configuration is run (not what is trained): folds, test set, seed, device, output handling."""

    folds: int = 5
    test: str = "holdout"
    holdout: float = 0.1
    tta: bool = False
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    overwrite: bool = False
    progress: bool = True
    report: bool = True
    dedupe: bool = False
    train_views: str = "augmented"
    selection: str = "fold"
    inner_folds: int = 1
    head_init: str = "random"
    probe: bool = True
    choose: bool = False
    tune: str | None = None
    preset: str | None = None
    positive: str | None = None

    def __post_init__(self) -> None:
        check_seed(self.seed)


def split_keywords(
    config: HeadConfig | None, options: TrainOptions | None, keywords: dict[str, Any]
) -> tuple[HeadConfig, TrainOptions]:
    """``config`` and ``options`` with the old flat keyword arguments (``lr=..., folds=...``) applied."""
    head_names = {f.name for f in fields(HeadConfig)}
    run_names = {f.name for f in fields(TrainOptions)}
    unknown = set(keywords) - head_names - run_names
    if unknown:
        raise TypeError(f"unexpected keyword argument {sorted(unknown)[0]!r}")
    config = replace(config or HeadConfig(), **{k: v for k, v in keywords.items() if k in head_names})
    options = replace(options or TrainOptions(), **{k: v for k, v in keywords.items() if k in run_names})
    return config, options


TRAIN_VIEWS = ("augmented", "all")


@dataclass(frozen=True)
class Plan:
    """A fixed schedule for a head: ``epochs`` to train and the learning rate of each (the last one repeats).
    A planned head validates but decides nothing from it (the plan was chosen elsewhere)."""

    epochs: int
    lr: tuple[float, ...]

    def lr_at(self, epoch: int) -> float:
        return self.lr[min(epoch, len(self.lr) - 1)] if self.lr else 0.0


@dataclass
class StackData:
    """Features on the training device ([N, V, D] float16), labels, and the rows of each fold.

    ``view_mode``: training draws one view per image per epoch from the augmented views 1..V-1
    (``augmented``, the paper's) or from all views 0..V-1 (``all``); standardisation statistics come from the
    same views. ``plans`` (one per fold, or None) and ``final_plan`` fix the schedule of those heads.
    ``linear_inits`` (one per fold, the final head's last, or None): a linear map ``(A [K, D], c [K])`` on raw
    features that those heads start from (``layout.embed_linear``).
    """

    features: torch.Tensor
    labels: np.ndarray
    classes: int
    folds: list[tuple[np.ndarray, np.ndarray]]
    pool: np.ndarray
    test: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    view_mode: str = "augmented"
    plans: list[Plan | None] | None = None
    final_plan: Plan | None = None
    linear_inits: list[tuple[np.ndarray, np.ndarray] | None] | None = None

    @property
    def views(self) -> int:
        return int(self.features.shape[1])

    @property
    def dim(self) -> int:
        return int(self.features.shape[2])

    @property
    def first_view(self) -> int:
        """The first view training draws from: 1 (augmented views only) or 0 (all views)."""
        return 1 if self.view_mode == "augmented" and self.views > 1 else 0

    def train_views(self) -> list[int]:
        return list(range(self.first_view, self.views))

    def plan(self, fold: int) -> Plan | None:
        """The fixed schedule of fold ``fold``'s heads (``len(folds)``: the final head), or None."""
        if fold == len(self.folds):
            return self.final_plan
        return self.plans[fold] if self.plans else None


HISTORY_KEYS = ("train_loss", "val_loss", "val_accuracy", "lr")


@dataclass
class HeadResult:
    """One trained head: its Head state dict (CPU) and what happened while training it.

    ``best_epoch`` is 1-based: the epoch whose parameters the head keeps. ``history`` holds one value per
    epoch run under each of :data:`HISTORY_KEYS`: the mean training loss over the epoch's steps, the
    validation loss and accuracy (view 0) and the learning rate the epoch trained with; the final head has no
    validation rows, so its ``val_loss`` and ``val_accuracy`` lists are empty.
    """

    config: int
    fold: int
    final: bool
    state: dict[str, torch.Tensor]
    best_epoch: int
    epochs_run: int
    val_loss: float | None
    val_loss_history: list[float]
    lr_history: list[float]
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
