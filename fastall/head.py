"""The one classification head shared by the cached path, the sweep and the end-to-end model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastall.errors import FastallError

HEAD_FORMAT, HEAD_VERSION = "fastall-head", 1  # head.pt, written by train-head, read by inference


class Head(nn.Module):
    """Standardise -> Linear -> ReLU -> Dropout -> Linear (the paper's 2048->512->2 head).

    The standardisation statistics are buffers, not parameters: they come from the training fold and travel
    with the head into the end-to-end model. With ``mean=0, std=1`` (the default) it is the paper's head.
    """

    def __init__(
        self, in_features: int = 2048, hidden: int = 512, dropout: float = 0.5, classes: int = 2
    ) -> None:
        super().__init__()
        self.in_features, self.hidden, self.dropout_p, self.classes = in_features, hidden, dropout, classes
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))
        self.fc1 = nn.Linear(in_features, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, classes)

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(std.to(self.std))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def forward(self, features: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits; ``keep`` (the dropout multiplier, 0 or ``1 / (1 - p)`` per hidden unit, from the training
        engine's random streams) replaces ``nn.Dropout``'s own draw when given."""
        hidden = torch.relu(self.fc1(self.standardize(features)))
        return self.fc2(self.drop(hidden) if keep is None else hidden * keep)

    @classmethod
    def from_state(cls, config: dict[str, Any] | None, state: dict[str, torch.Tensor]) -> Head:
        """The one way to rebuild a head: sizes from ``config`` (or, if None, from the state dict), weights
        loaded, eval mode. A state that does not fit, or holds NaN/Inf, a zero or negative ``std`` or a
        dropout outside [0, 1), raises a one-line ``FastallError``."""
        _check_values(config, state)
        try:
            head = cls(**(config if config is not None else _sizes(state)))
            head.load_state_dict(state)
        except (TypeError, RuntimeError, KeyError, AttributeError, ValueError) as err:
            first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            raise FastallError(f"head weights do not fit head_config {config}: {first}") from err
        return head.eval()

    def config(self) -> dict:
        return {
            "in_features": self.in_features,
            "hidden": self.hidden,
            "dropout": self.dropout_p,
            "classes": self.classes,
        }


def head_parameters(in_features: int, hidden: int, classes: int) -> dict[str, torch.Size]:
    """The trainable tensors of one :class:`Head`: names and shapes, in the module's order (read from a Head
    built on the meta device, so a layer added to Head is a layer of the stack)."""
    with torch.device("meta"):
        head = Head(in_features, hidden, 0.0, classes)
    return {name: p.shape for name, p in head.named_parameters()}


def head_from_state_dict(state: dict[str, torch.Tensor], dropout: float = 0.5) -> Head:
    """Rebuild a :class:`Head` (sizes read from the state dict) and load it."""
    return Head.from_state({**_sizes(state), "dropout": dropout}, state)


def _check_values(config: dict[str, Any] | None, state: dict[str, Any]) -> None:
    """Refuse what would load but predict nonsense: non-numeric or non-finite weights, a std that is not
    positive (a division by zero), a dropout that is not a number in [0, 1)."""
    if not isinstance(state, dict):
        raise FastallError(f"head weights are a {type(state).__name__}, not a state dict")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise FastallError(f"head weight {name!r} is a {type(value).__name__}, not a float tensor")
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise FastallError(
                f"head weight {name!r} holds {bad} non-finite value(s) (NaN/Inf): the head is unusable; "
                "retrain it"
            )
    std = state.get("std")
    if isinstance(std, torch.Tensor) and bool((std <= 0).any()):
        raise FastallError(
            f"head standardisation 'std' has {int((std <= 0).sum())} zero or negative value(s): a division "
            "by zero; retrain the head"
        )
    dropout = (config or {}).get("dropout", 0.5)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise FastallError(f"head_config dropout {dropout!r}: not a number in [0, 1)")


def _sizes(state: dict[str, torch.Tensor]) -> dict[str, int]:
    hidden, in_features = state["fc1.weight"].shape
    return {
        "in_features": int(in_features),
        "hidden": int(hidden),
        "classes": int(state["fc2.weight"].shape[0]),
    }
