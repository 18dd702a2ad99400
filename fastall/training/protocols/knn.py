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


RANKED = 1024
MARGIN = 2.0  # read the ranking when it should hold MARGIN x top of the columns


def ranked(sim: torch.Tensor, width: int = RANKED) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``width`` most similar training rows of every query row, most similar first: ``(values,
    indices) [N, width]``. Computed once per fold, it serves every subset of the training columns
    (:func:`votes`' ``ranking``)."""
    return sim.topk(min(width, sim.shape[1]), dim=1)


def _neighbours(
    sim: torch.Tensor, top: int, columns: torch.Tensor | None, ranking: tuple | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices) [N, top]`` of the ``top`` most similar of ``columns`` (all when None), most
    similar first, indices into the training rows. With ``ranking``, rows whose ranked list holds at least
    ``top`` of the columns read it; the others take the exact top-k of ``sim`` restricted to the columns
    (as every row does when the ranking covers every column, or should hold too few of them)."""
    if columns is None:
        return sim.topk(top, dim=1)
    share = columns.numel() / sim.shape[1]
    if ranking is None or ranking[1].shape[1] == sim.shape[1] or share * ranking[1].shape[1] < MARGIN * top:
        value, index = sim.index_select(1, columns).topk(top, dim=1)
        return value, columns[index]
    member = torch.zeros(sim.shape[1], dtype=torch.bool, device=sim.device)
    member[columns] = True
    hit = member[ranking[1]]
    first = hit & (hit.cumsum(1) <= top)
    good = first.sum(1) == top
    value = torch.empty(sim.shape[0], top, dtype=sim.dtype, device=sim.device)
    index = torch.empty(sim.shape[0], top, dtype=torch.int64, device=sim.device)
    at = first[good].nonzero()[:, 1].view(-1, top)
    value[good] = ranking[0][good].gather(1, at)
    index[good] = ranking[1][good].gather(1, at)
    if not bool(good.all()):
        rest = (~good).nonzero()[:, 0]
        v, i = sim.index_select(0, rest).index_select(1, columns).topk(top, dim=1)
        value[rest], index[rest] = v, columns[i]
    return value, index


def votes(
    sim: torch.Tensor,
    train_labels: np.ndarray,
    classes: int,
    *,
    ks: tuple[int, ...] = KS,
    temperature: float = TEMPERATURE,
    columns: np.ndarray | None = None,
    ranking: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[tuple[int, str], np.ndarray]:
    """``{(k, vote): [N, K] vote shares}`` for each k (capped at the training rows) and both votes, from
    ``sim`` restricted to ``columns`` (a subset of the training rows) when given; ``ranking``
    (:func:`ranked` of ``sim``) makes a subset's neighbours cheap and changes no result."""
    y = torch.as_tensor(np.asarray(train_labels, dtype=np.int64), device=sim.device)
    cols = None if columns is None else torch.as_tensor(columns, dtype=torch.int64, device=sim.device)
    top = min(max(ks), sim.shape[1] if cols is None else int(cols.numel()))
    value, index = _neighbours(sim, top, cols, ranking)
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
