"""What the training engine takes and returns: a head configuration, the data of a stack, a trained head."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fastall.errors import FastallError

MAX_LR, MAX_WEIGHT_DECAY, MAX_HIDDEN, MAX_EPOCHS, MAX_BATCH = 1.0, 1.0, 65536, 10000, 65536


@dataclass(frozen=True)
class HeadConfig:
    """One head configuration (the train-head options that change training)."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    dropout: float = 0.5
    hidden: int = 512
    epochs: int = 5
    batch_size: int = 32
    patience: int | None = None
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    class_weight: str = "none"
    standardize: bool = True

    def check(self) -> HeadConfig:
        problems = [
            (0 < self.lr <= MAX_LR, f"lr {self.lr} must be a finite number in (0, {MAX_LR:g}]"),
            (
                0 <= self.weight_decay <= MAX_WEIGHT_DECAY,
                f"weight_decay {self.weight_decay} must be a finite number in [0, {MAX_WEIGHT_DECAY:g}]",
            ),
            (0 <= self.dropout < 1, f"dropout {self.dropout} must be in [0, 1)"),
            (1 <= self.hidden <= MAX_HIDDEN, f"hidden {self.hidden} must be in 1..{MAX_HIDDEN}"),
            (1 <= self.epochs <= MAX_EPOCHS, f"epochs {self.epochs} must be in 1..{MAX_EPOCHS}"),
            (1 <= self.batch_size <= MAX_BATCH, f"batch_size {self.batch_size} must be in 1..{MAX_BATCH}"),
            (
                self.patience is None or 1 <= self.patience <= MAX_EPOCHS,
                f"patience {self.patience} must be in 1..{MAX_EPOCHS}",
            ),
            (0 < self.plateau_factor <= 1, f"plateau_factor {self.plateau_factor} must be in (0, 1]"),
            (self.plateau_patience >= 0, f"plateau_patience {self.plateau_patience} must be >= 0"),
            (
                self.class_weight in ("none", "balanced"),
                f"class_weight {self.class_weight!r}: expected none or balanced",
            ),
        ]
        bad = [msg for ok, msg in problems if not ok]
        if bad:
            raise FastallError(f"invalid head configuration: {bad[0]}")
        return self

    @property
    def shape(self) -> tuple[int, int]:
        return (self.hidden, self.batch_size)


@dataclass
class StackData:
    """Features on the training device ([N, V, D] float16), labels, and the rows of each fold."""

    features: torch.Tensor
    labels: np.ndarray
    classes: int
    folds: list[tuple[np.ndarray, np.ndarray]]
    pool: np.ndarray
    test: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    @property
    def views(self) -> int:
        return int(self.features.shape[1])

    @property
    def dim(self) -> int:
        return int(self.features.shape[2])

    def train_views(self) -> list[int]:
        return list(range(1, self.views)) if self.views > 1 else [0]


@dataclass
class HeadResult:
    """One trained head: its Head state dict (CPU) and what happened while training it."""

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
