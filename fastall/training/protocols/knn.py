"""Cosine kNN on standardised features: k in {1, 5, 20, 50} by default, a plain majority vote and a vote
weighted by ``exp(similarity / T)`` (T = 0.07, dinov2's), one matrix product per fold.

Each fold standardises with its training rows' statistics, normalises every row to unit length and takes the
similarities of its validation rows to its training rows once; every k, both votes and every label-efficiency
draw (a subset of the training columns) read that one matrix. Probabilities are the vote shares. Ties in the
vote go to the lowest class index, as sklearn's ``KNeighborsClassifier``.
"""

from __future__ import annotations

import numpy as np
import torch

KS: tuple[int, ...] = (1, 5, 20, 50)
TEMPERATURE = 0.07
VOTES = ("plain", "weighted")


def _unit(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize((x.float() - mean) / scale, dim=1)


def standardiser(x: torch.Tensor, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, scale) of ``x[rows]`` as StandardScaler computes them (scale 1 where the std is 0)."""
    xr = x[torch.as_tensor(rows, device=x.device)].double()
    mean, sd = xr.mean(0), xr.std(0, unbiased=False)
    return mean.float(), torch.where(sd > 1e-12 * (1 + mean.abs()), sd, torch.ones_like(sd)).float()


def similarities(x: torch.Tensor, train: np.ndarray, val: np.ndarray) -> torch.Tensor:
    """``[len(val), len(train)]`` cosine similarities on features standardised by the training rows."""
    mean, scale = standardiser(x, train)
    dev = x.device
    return (
        _unit(x[torch.as_tensor(val, device=dev)], mean, scale)
        @ _unit(x[torch.as_tensor(train, device=dev)], mean, scale).T
    )


def votes(
    sim: torch.Tensor,
    train_labels: np.ndarray,
    classes: int,
    *,
    ks: tuple[int, ...] = KS,
    temperature: float = TEMPERATURE,
    columns: np.ndarray | None = None,
) -> dict[tuple[int, str], np.ndarray]:
    """``{(k, vote): [N, K] vote shares}`` for each k (capped at the training rows) and both votes, from
    ``sim`` restricted to ``columns`` (a subset of the training rows) when given."""
    y = torch.as_tensor(np.asarray(train_labels, dtype=np.int64), device=sim.device)
    if columns is not None:
        cols = torch.as_tensor(columns, device=sim.device)
        sim, y = sim[:, cols], y[cols]
    top = min(max(ks), sim.shape[1])
    value, index = sim.topk(top, dim=1)
    onehot = torch.nn.functional.one_hot(y[index], classes).double()  # [N, top, K]
    weight = torch.exp((value.double() - 1.0) / temperature)[..., None]
    out = {}
    for k in ks:
        kk = min(k, top)
        for vote, w in (("plain", None), ("weighted", weight)):
            counts = onehot[:, :kk].sum(1) if w is None else (onehot[:, :kk] * w[:, :kk]).sum(1)
            out[k, vote] = (counts / counts.sum(1, keepdim=True)).cpu().numpy()
    return out


def predict(shares: np.ndarray) -> np.ndarray:
    """The vote's class per row (lowest class index on a tie, as sklearn's mode)."""
    return shares.argmax(1)
