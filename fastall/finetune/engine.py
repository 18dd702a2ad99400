"""The fine-tuning engine: the stage after the cut, pooled, and the one :class:`~fastall.head.Head`, trained
with autograd and ``torch.optim.AdamW`` from any source of maps at the cut.

A source has ``batches(plan)``: for each ``(rows, views)`` of the plan, the maps of those views of those rows
(fp16 or fp32 holding fp16 values). :class:`~fastall.features.maps.MapStore` reads them from a store;
:class:`~fastall.finetune.pixels.PixelSource` computes them end to end from the images (decode, augment,
frozen front). The engine cannot tell them apart, which is what the equivalence tests check.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastall.features.cut import Pooled
from fastall.finetune.config import FinetuneConfig
from fastall.head import Head
from fastall.training.layout import embed_linear
from fastall.training.streams import derive_seed

Plan = list[tuple[np.ndarray, np.ndarray]]


class Source(Protocol):
    def batches(self, plan: Sequence[tuple[np.ndarray, np.ndarray]]) -> Iterator[torch.Tensor]: ...


class Net(nn.Module):
    """maps -> stage -> global average pool -> head."""

    def __init__(self, stage: nn.Module, head: Head) -> None:
        super().__init__()
        self.pooled = Pooled(stage)
        self.head = head

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(maps))

    def train_mode(self, bn: str) -> Net:
        """Training mode; with ``bn`` frozen the BatchNorm layers keep their statistics (eval mode)."""
        self.train()
        if bn == "frozen":
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def make_net(
    stage: nn.Module,
    config: FinetuneConfig,
    classes: int,
    stats: tuple[torch.Tensor, torch.Tensor],
    seed: int,
    linear: tuple[np.ndarray, np.ndarray] | None = None,
) -> Net:
    """A fresh net: a copy of ``stage`` (the backbone's weights), a head seeded by ``seed`` standardising
    with ``stats`` (the training rows' pooled features) and, with ``linear`` ``(A, c)``, started as that
    linear map (:func:`~fastall.training.layout.embed_linear`, the default preset's start at the probe)."""
    mean, std = (t.reshape(-1).float() for t in stats)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = Head(int(mean.numel()), config.hidden, config.dropout, classes)
    head.set_standardization(mean, std)
    if linear is not None:
        with torch.no_grad():
            layers = (head.fc1.weight, head.fc1.bias, head.fc2.weight, head.fc2.bias)
            params = [p.data.unsqueeze(0) for p in layers]  # views: a stack of one, in Head's own layout
            embed_linear(params, 0, linear[0], linear[1], mean, std)
    return Net(copy.deepcopy(stage).float().requires_grad_(True), head)


def optimizer(net: Net, config: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW with layer-wise learning rates: the stage at ``lr * stage_lr``, the head at ``lr``."""
    groups = [
        {"params": list(net.pooled.parameters()), "lr": config.stage_rate},
        {"params": list(net.head.parameters()), "lr": config.lr},
    ]
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def epoch_plan(rows: np.ndarray, views: Sequence[int], batch_size: int, seed: int, epoch: int) -> Plan:
    """The epoch's batches: ``rows`` in a seeded order, each with one view drawn from ``views``."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(np.asarray(rows, dtype=np.int64))
    drawn = np.asarray(views, dtype=np.int64)[rng.integers(0, len(views), size=order.size)]
    return [(order[a : a + batch_size], drawn[a : a + batch_size]) for a in range(0, order.size, batch_size)]


def step(net: Net, opt: torch.optim.Optimizer, maps: torch.Tensor, y: torch.Tensor) -> float:
    """One optimiser step on one batch; returns its loss."""
    device = next(net.parameters()).device
    loss = F.cross_entropy(net(maps.to(device)), y.to(device))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _view0(rows: np.ndarray, batch_size: int) -> Plan:
    rows = np.asarray(rows, dtype=np.int64)
    return [
        (rows[a : a + batch_size], np.zeros(rows[a : a + batch_size].size, np.int64))
        for a in range(0, rows.size, batch_size)
    ]


@torch.no_grad()
def predict(net: Net, source: Source, rows: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities ``[len(rows), K]`` of view 0 (eval mode)."""
    net.eval()
    device = next(net.parameters()).device
    out = [torch.softmax(net(m.to(device)), 1).cpu() for m in source.batches(_view0(rows, batch_size))]
    return torch.cat(out).double().numpy() if out else np.zeros((0, net.head.classes))


@torch.no_grad()
def pooled_features(net: Net, source: Source, rows: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """float16 ``[len(rows), D]``: view 0 through the stage and pool (what the head standardises)."""
    net.eval()
    device = next(net.parameters()).device
    out = [net.pooled(m.to(device)).cpu() for m in source.batches(_view0(rows, batch_size))]
    return torch.cat(out).half().numpy() if out else np.zeros((0, net.head.in_features), np.float16)


def _val(net: Net, source: Source, rows: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    prob = predict(net, source, rows)
    y = labels[rows]
    loss = float(-np.mean(np.log(np.clip(prob[np.arange(y.size), y], 1e-12, 1))))
    return loss, float(np.mean(prob.argmax(1) == y))


@dataclass
class Fit:
    """A trained net (best epoch restored) and its history (``best_epoch`` 0: the start was kept)."""

    net: Net
    best_epoch: int
    epochs_run: int
    history: dict[str, list[float]] = field(default_factory=dict)
    start_loss: float | None = None

    @property
    def val_loss(self) -> float | None:
        losses = self.history.get("val_loss") or []
        return losses[self.best_epoch - 1] if losses and self.best_epoch >= 1 else self.start_loss


def fit(
    net: Net,
    source: Source,
    labels: np.ndarray,
    rows: np.ndarray,
    config: FinetuneConfig,
    *,
    views: Sequence[int],
    seed: int,
    val: np.ndarray | None = None,
    epochs: int | None = None,
    progress: Callable[[int], Any] | None = None,
) -> Fit:
    """Train ``net`` on ``rows`` for ``epochs`` (default ``config.epochs``); with ``val`` rows, stop after
    ``config.patience`` epochs without a lower validation loss and restore the best (the start included)."""
    epochs = config.epochs if epochs is None else epochs
    opt = optimizer(net, config)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "val_accuracy": [], "lr": []}
    best_loss, best_epoch, best_state, start = np.inf, 0, None, None
    if val is not None and val.size:
        start = _val(net, source, val, labels)[0]
        best_loss, best_state = start, copy.deepcopy(net.state_dict())
    since, done = 0, 0
    y_all = torch.as_tensor(labels, dtype=torch.long)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "dropout", bits=63))
        for epoch in range(1, epochs + 1):
            plan = epoch_plan(rows, views, config.batch_size, seed, epoch)
            net.train_mode(config.bn)
            losses = [
                step(net, opt, maps, y_all[torch.as_tensor(r)])
                for (r, _), maps in zip(plan, source.batches(plan), strict=True)
            ]
            history["train_loss"].append(float(np.mean(losses)))
            history["lr"].append(config.lr)
            done = epoch
            if progress is not None:
                progress(1)
            if val is None or not val.size:
                continue
            loss, acc = _val(net, source, val, labels)
            history["val_loss"].append(loss)
            history["val_accuracy"].append(acc)
            if loss < best_loss * (1 - config.min_delta):
                best_loss, best_epoch, best_state, since = loss, epoch, copy.deepcopy(net.state_dict()), 0
            else:
                since += 1
                if config.patience is not None and since >= config.patience:
                    break
    if val is None or not val.size or config.patience is None:
        best_epoch = done
    elif best_state is not None:
        net.load_state_dict(best_state)
    return Fit(net.eval(), best_epoch, done, history, start)
