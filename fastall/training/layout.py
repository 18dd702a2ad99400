"""The parameter layout of a stack: which heads it holds, in what order, their stacked initial parameters and
per-head constants.

A stack holds M heads of one shape (hidden size H, batch size B); head i is one (configuration, fold) pair,
stored fold-major (the heads of a fold are contiguous). With D features and K classes:

- parameters (fp32): :class:`~fastall.head.Head`'s own, in its order and shapes, stacked over the heads
  (``head.head_parameters``): ``fc1.weight [M, H, D]``, ``fc1.bias [M, H]``, ``fc2.weight [M, K, H]``,
  ``fc2.bias [M, K]`` (called W1, b1, W2, b2 in the arithmetic); head i's state dict is their row i
  (:meth:`StackLayout.state_dict`);
- standardisation: ``mean``, ``std [M, D]`` (0 and 1 for a head without ``standardize``),
  ``inv = 1 / std`` and ``shift = -mean / std``, both ``[M, 1, D]``;
- dropout: ``thr [M, 1, 1]`` (int16 lane threshold, see ``streams.dropout_threshold``), ``scale [M, 1, 1]``
  (``1 / (1 - p)``);
- loss: ``class_w [M, K]`` (ones, or balanced over the head's training rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from fastall.head import head_parameters
from fastall.training.config import HISTORY_KEYS, HeadConfig, Plan, StackData
from fastall.training.streams import dropout_threshold, init_head


@dataclass
class HeadState:
    """One head of a stack: what it is, its schedule and early-stopping state, and its per-epoch history."""

    config: int
    cfg: HeadConfig
    fold: int  # index into the stack's folds; the final head's fold is len(data.folds)
    final: bool
    lr: float
    limit: int = 0  # the most epochs it trains (epochs, min_steps or its plan)
    plan: Plan | None = None
    alive: bool = True
    best_loss: float = math.inf
    initial_loss: float | None = None  # validation loss before training (heads with a linear start)
    best_epoch: int = 0  # 1-based; 0 until an epoch has been validated
    epochs_run: int = 0
    plateau_best: float = math.inf
    plateau_bad: int = 0
    history: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
    snapshots: list[list[torch.Tensor]] = field(default_factory=list)

    @property
    def val_history(self) -> list[float]:
        return self.history["val_loss"]

    @property
    def lr_history(self) -> list[float]:
        return self.history["lr"]


def embed_linear(
    params: list[torch.Tensor], i: int, a: np.ndarray, c: np.ndarray, mean: torch.Tensor, std: torch.Tensor
) -> None:
    """Make head i compute the linear logits ``a x + c`` (raw features x) exactly, through 2K of its hidden
    units: ``relu(z) - relu(-z) = z`` per class, on the head's standardised inputs (``x = x_s * std + mean``).
    Its other units keep their random first layer with zero output weights, so they start silent and learn.
    Dropout only perturbs training; evaluation starts from the linear model. Needs hidden >= 2K."""
    w1, b1, w2, b2 = params
    k = a.shape[0]
    if w1.shape[1] < 2 * k:
        return
    a_t = torch.as_tensor(a, dtype=torch.float64, device=w1.device)
    a_s = a_t * std.double()[None, :]
    c_s = torch.as_tensor(c, dtype=torch.float64, device=w1.device) + a_t @ mean.double()
    w1[i, :k] = a_s.float()
    w1[i, k : 2 * k] = -a_s.float()
    b1[i, :k] = c_s.float()
    b1[i, k : 2 * k] = -c_s.float()
    w2[i].zero_()
    eye = torch.eye(k, device=w2.device)
    w2[i, :, :k] = eye
    w2[i, :, k : 2 * k] = -eye
    b2[i].zero_()


class StackLayout:
    """The heads of a stack and their tensors (shapes in the module docstring), on the features' device."""

    def __init__(
        self,
        data: StackData,
        configs: list[tuple[int, HeadConfig]],
        *,
        final: bool,
        seed: int,
        stats: tuple[torch.Tensor, torch.Tensor],
    ) -> None:
        self.data = data
        self.device = dev = data.features.device
        self.hidden, self.batch = configs[0][1].shape
        n_folds = len(data.folds) + (1 if final else 0)
        self.rows = [tr for tr, _ in data.folds] + ([data.pool] if final else [])
        self.heads = [
            HeadState(ci, cfg, f, f == len(data.folds), cfg.lr) for f in range(n_folds) for ci, cfg in configs
        ]
        steps = self.steps_per_fold()
        for hd in self.heads:
            hd.plan = data.plan(hd.fold)
            hd.lr = hd.plan.lr_at(0) if hd.plan else hd.lr
            hd.limit = hd.plan.epochs if hd.plan else hd.cfg.epoch_limit(steps[hd.fold])
        for hd in self.heads:  # a final head may need as many epochs as its longest fold head keeps
            if hd.final and hd.plan is None:
                hd.limit = max([hd.limit] + [f.limit for f in self.fold_heads(hd.config)])
        d, h, k = data.dim, self.hidden, data.classes
        self.names = list(head_parameters(d, h, k))
        inits = [init_head(seed, f, d, h, k) for f in range(n_folds)]
        fold_idx = torch.tensor([hd.fold for hd in self.heads], device=dev)
        self.params = [
            torch.stack([init[name] for init in inits]).to(dev).index_select(0, fold_idx)
            for name in self.names
        ]
        mean, std = stats
        std_on = torch.tensor([hd.cfg.standardize for hd in self.heads], device=dev)[:, None]
        self.mean = torch.where(std_on, mean[fold_idx], torch.zeros(1, device=dev))
        self.std = torch.where(std_on, std[fold_idx], torch.ones(1, device=dev))
        self.inv = (1.0 / self.std).unsqueeze(1)
        self.shift = (-self.mean).unsqueeze(1) * self.inv
        if data.linear_inits is not None:
            for i, hd in enumerate(self.heads):
                init = data.linear_inits[hd.fold]
                if init is not None:
                    embed_linear(self.params, i, *init, self.mean[i], self.std[i])
        m = len(self.heads)
        p = torch.tensor([hd.cfg.dropout for hd in self.heads], device=dev)
        thr = [dropout_threshold(hd.cfg.dropout) for hd in self.heads]
        self.thr = torch.tensor(thr, device=dev, dtype=torch.int16).view(m, 1, 1)
        self.scale = (1.0 / (1.0 - p)).float().view(m, 1, 1)
        self.class_w = torch.stack([self._class_weights(hd) for hd in self.heads]).to(dev)

    def state_dict(self, params: list[torch.Tensor], i: int) -> dict[str, torch.Tensor]:
        """Head i's :class:`Head` state dict (on the CPU): its row of every parameter, its standardisation."""
        state = {
            name: p[i].detach().float().cpu().clone() for name, p in zip(self.names, params, strict=True)
        }
        return {"mean": self.mean[i].cpu().clone(), "std": self.std[i].cpu().clone(), **state}

    def _class_weights(self, hd: HeadState) -> torch.Tensor:
        k = self.data.classes
        if hd.cfg.class_weight == "none":
            return torch.ones(k)
        counts = np.bincount(self.data.labels[self.rows[hd.fold]], minlength=k).astype(np.float64)
        weights = np.where(counts > 0, counts.sum() / (k * np.maximum(counts, 1)), 0.0)
        return torch.tensor(weights, dtype=torch.float32)

    def steps_per_fold(self) -> dict[int, int]:
        """Training steps of an epoch for each fold index (its rows in batches, the last one partial)."""
        return {f: -(-len(rows) // self.batch) for f, rows in enumerate(self.rows)}

    def chunks(self, a: int, b: int, size: int, alive_only: bool = True) -> list[tuple[int, int]]:
        """Heads a..b in runs of at most ``size``, trimmed to their first and last alive head."""
        out = []
        for start in range(a, b, size):
            idx = [i for i in range(start, min(start + size, b)) if self.heads[i].alive or not alive_only]
            if idx:
                out.append((idx[0], idx[-1] + 1))
        return out

    def fold_ranges(self) -> list[tuple[int, int, int]]:
        """(fold, a, b): the contiguous head range of each fold."""
        out, a = [], 0
        for i in range(1, len(self.heads) + 1):
            if i == len(self.heads) or self.heads[i].fold != self.heads[a].fold:
                out.append((self.heads[a].fold, a, i))
                a = i
        return out

    def fold_heads(self, config: int) -> list[HeadState]:
        return [hd for hd in self.heads if hd.config == config and not hd.final]
