"""The inputs of one epoch: every step's standardised features, dropout lanes, row weights and targets for a
chunk of heads, built at once (:func:`epoch_batch`), and the per-thread scratch buffers they live in."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from fastall.training.layout import StackLayout


class Scratch:
    """Per-thread buffers reused across epochs (a fresh large CPU allocation faults in every page)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._local = threading.local()

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        size = math.prod(shape)
        buf = getattr(self._local, name, None)
        if buf is None or buf.numel() < size or buf.dtype != dtype:
            buf = torch.empty(size, dtype=dtype, device=self.device)
            setattr(self._local, name, buf)
        return buf[:size].view(shape)


def standardize_rows(
    layout: StackLayout,
    scratch: Scratch,
    out: torch.Tensor,
    index: torch.Tensor,
    head: int,
    block: int = 1024,
) -> None:
    """``out [n, D] = (features[index] - mean) / std`` with head ``head``'s statistics, where ``index`` counts
    (image, view) pairs (``image * V + view``); in row blocks through fp32 scratch."""
    flat = layout.data.features.reshape(-1, layout.data.dim)
    raw = scratch.get("raw", (block, layout.data.dim), flat.dtype)
    tmp = scratch.get("tmp", (block, layout.data.dim), torch.float32)
    for r0 in range(0, index.numel(), block):
        n = min(block, index.numel() - r0)
        torch.index_select(flat, 0, index[r0 : r0 + n], out=raw[:n])
        x = tmp[:n].copy_(raw[:n])
        out[r0 : r0 + n] = x.mul_(layout.inv[head, 0]).add_(layout.shift[head, 0])


@dataclass
class EpochBatch:
    """One epoch of a chunk of ``Mc`` heads: ``S`` steps of ``B`` rows (D features, H hidden, K classes).

    Heads that share a fold and ``standardize`` share their inputs (one *variant*), and heads of one fold
    share their dropout lanes. Rows past the end of a head's fold (its last steps when folds differ in size)
    have weight 0.
    """

    steps: int  # S: the most steps of any fold in the chunk
    x: torch.Tensor  # [S, U, B, D] compute dtype: standardised inputs of the U variants
    variant: torch.Tensor | None  # [Mc] long: head j's variant; None when it is j
    lanes: torch.Tensor  # [S, F, B, H] int16: dropout lanes of the chunk's F folds
    fold: torch.Tensor | None  # [Mc] long: head j's fold in ``lanes``; None when it is j
    w: torch.Tensor  # [S, Mc, B, 1] fp32: row weights (class weights, normalised to sum 1 per step)
    target: torch.Tensor  # [S, Mc, B, K] fp32: one-hot labels times ``w``


def epoch_batch(
    layout: StackLayout,
    scratch: Scratch,
    a: int,
    b: int,
    order: dict[int, tuple[np.ndarray, np.ndarray]],
    n_steps: dict[int, int],
    lanes: dict[int, torch.Tensor],
    dtype: torch.dtype,
) -> EpochBatch:
    """The epoch's inputs for heads a..b: ``order[f]`` is fold f's (rows, views) in epoch order,
    ``n_steps[f]`` its step count, ``lanes[f]`` its dropout lanes ``[steps, B, H]``; ``dtype`` is the
    compute dtype."""
    data, heads, dev, bsz, k = (
        layout.data,
        layout.heads[a:b],
        layout.device,
        layout.batch,
        layout.data.classes,
    )
    folds = sorted({hd.fold for hd in heads if hd.alive})
    first: dict[tuple[int, bool], int] = {}
    for i, hd in enumerate(heads, a):
        if hd.alive:
            first.setdefault((hd.fold, hd.cfg.standardize), i)
    variants = list(first.items())
    s_max = max(n_steps[f] for f in folds)
    xs = scratch.get("xs", (len(variants), s_max, bsz, data.dim), dtype)
    valid = torch.zeros((len(folds), s_max * bsz), dtype=torch.bool)
    y = torch.zeros((len(folds), s_max * bsz), dtype=torch.long)
    index = torch.zeros((len(folds), s_max * bsz), dtype=torch.long)
    for j, f in enumerate(folds):
        r, v = order[f]
        index[j, : len(r)] = torch.from_numpy(r * data.views + v)
        valid[j, : len(r)] = True
        y[j, : len(r)] = torch.from_numpy(data.labels[r])
    index = index.to(dev)
    for u, ((f, _), i) in enumerate(variants):
        standardize_rows(layout, scratch, xs[u].view(-1, data.dim), index[folds.index(f)], i)
    key = {(f, std): u for u, ((f, std), _) in enumerate(variants)}
    var = [key.get((hd.fold, hd.cfg.standardize), 0) for hd in heads]
    fpos = [folds.index(hd.fold) if hd.fold in folds else 0 for hd in heads]
    fpos_t = torch.tensor(fpos)
    y, valid = y[fpos_t].view(b - a, s_max, bsz), valid[fpos_t].view(b - a, s_max, bsz)
    w = layout.class_w[a:b].cpu().gather(1, y.view(b - a, -1)).view(b - a, s_max, bsz) * valid
    w = (w / w.sum(2, keepdim=True).clamp_min(1e-12)).transpose(0, 1).contiguous()  # [S, Mc, B]
    target = torch.nn.functional.one_hot(y.transpose(0, 1), k).float() * w.unsqueeze(-1)
    if len(folds) == 1:
        lane_steps = lanes[folds[0]].unsqueeze(1)
    else:
        lane_steps = torch.zeros((s_max, len(folds), bsz, layout.hidden), dtype=torch.int16, device=dev)
        for j, f in enumerate(folds):
            lane_steps[: n_steps[f], j] = lanes[f]
    same = list(range(b - a))
    return EpochBatch(
        steps=s_max,
        x=xs.transpose(0, 1),
        variant=None if var == same else torch.tensor(var, device=dev),
        lanes=lane_steps,
        fold=None if fpos == same else torch.tensor(fpos, device=dev),
        w=w.unsqueeze(-1).to(dev),
        target=target.to(dev),
    )
