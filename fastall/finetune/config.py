"""What `fastall finetune` trains: the stage after the cut and the head, declared once as hyperparameters
(:func:`~fastall.system.settings.hparam`: the CLI options and the ``--tune`` grid come from here), and its
two presets."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fastall.errors import FastallError
from fastall.system.settings import HParam, hparam, hparams_of, within
from fastall.training.config import MAX_BATCH, MAX_EPOCHS, MAX_HIDDEN, MAX_LR, MAX_WEIGHT_DECAY

BN_MODES = ("frozen", "train")


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning configuration (fastall's default preset by default)."""

    lr: float = hparam(
        3e-4,
        "AdamW learning rate of the head.",
        **within(0, MAX_LR, low_open=True),
        log=True,
    )
    stage_lr: float = hparam(
        0.1,
        "The stage's learning rate as a fraction of the head's (layer-wise: the stage lower).",
        **within(0.0, 1.0),
        log=True,
    )
    weight_decay: float = hparam(
        1e-4,
        "AdamW decoupled weight decay (stage and head).",
        **within(0.0, MAX_WEIGHT_DECAY),
        log=True,
    )
    dropout: float = hparam(0.5, "Dropout before the head's output layer.", **within(0, 1, high_open=True))
    hidden: int = hparam(
        512,
        "Hidden units of the head.",
        **within(1, MAX_HIDDEN),
    )
    epochs: int = hparam(
        10,
        "Training epochs (the most, with --patience).",
        **within(1, MAX_EPOCHS),
    )
    batch_size: int = hparam(32, "Maps per step.", **within(1, MAX_BATCH))
    patience: int | None = hparam(
        3,
        "Early stopping on the inner split's validation loss (best epoch kept); none: keep the last.",
        **within(1, MAX_EPOCHS),
    )
    min_delta: float = hparam(
        0.03,
        "Early stopping counts an epoch as better only when its validation loss is lower by this fraction "
        "(train-head's default preset: 0.03).",
        **within(0, 1, high_open=True),
    )
    bn: str = hparam(
        "frozen",
        "BatchNorm statistics of the stage: frozen (the backbone's, the default) or train (updated).",
        choices=BN_MODES,
    )

    @staticmethod
    def hparams() -> tuple[HParam, ...]:
        return hparams_of(FinetuneConfig)

    def check(self) -> FinetuneConfig:
        for spec in self.hparams():
            problem = spec.problem(getattr(self, spec.name))
            if problem:
                raise FastallError(f"invalid finetune configuration: {problem}")
        return self

    @property
    def stage_rate(self) -> float:
        return self.lr * self.stage_lr


@dataclass(frozen=True)
class FinetunePreset:
    name: str
    config: FinetuneConfig
    train_views: str
    selection: str
    head_init: str
    summary: str
    inner_folds: int = 1


FINETUNE_PRESETS = {
    p.name: p
    for p in (
        FinetunePreset(
            "default",
            FinetuneConfig(),
            "all",
            "inner",
            "probe",
            "AdamW 3e-4 (stage 0.1x), decay 1e-4, all views, head started at the probe, early stopping on an "
            "inner 3-fold CV of the training patients (3 % lower loss to count; the median epoch, 0 keeps "
            "the probe), then refitted on the fold",
            inner_folds=3,
        ),
        FinetunePreset(
            "paper",
            FinetuneConfig(lr=1e-4, stage_lr=1.0, weight_decay=0.0, epochs=5, patience=None, min_delta=0.0),
            "augmented",
            "fold",
            "random",
            "the paper's schedule (Adam 1e-4, 5 epochs, augmented views), last epoch kept",
        ),
    )
}


def finetune_preset(name: str, config: dict[str, Any]) -> tuple[FinetuneConfig, FinetunePreset]:
    """The preset's configuration with ``config`` (FinetuneConfig fields given explicitly) on top."""
    if name not in FINETUNE_PRESETS:
        raise FastallError(f"unknown --preset {name!r}: use {' or '.join(FINETUNE_PRESETS)}")
    p = FINETUNE_PRESETS[name]
    return replace(p.config, **{k: v for k, v in config.items() if v is not None}).check(), p
