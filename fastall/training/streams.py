"""Random streams and statistics of the training engine: each a pure function of (seed, fold, epoch).

Nothing here depends on which other heads are trained alongside, on the batch composition of a stack or on
the order of calls, which is what makes a head trained alone equal to the same head inside a sweep.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from fastall.head import head_parameters


def derive_seed(*parts: object, bits: int = 63) -> int:
    """A stable integer seed from any parts (blake2b of their repr), independent of Python's hash salt."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << bits) - 1)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int32 tensors (wrapping multiplies, logical shifts by masking)."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * -0x7B935975
    return x ^ ((x >> 16) & 0xFFFF)


def dropout_lanes(
    seed: int, fold: int, epoch: int, steps: int, batch: int, hidden: int, device: torch.device
) -> torch.Tensor:
    """int16 uniforms ``[steps, batch, hidden]``, element (s, b, h) a hash of (seed, fold, epoch, s, b, h).

    Unit h keeps its activation iff ``lane >= round(p * 65536) - 32768`` (p is resolved to 1/65536).
    """
    half = (hidden + 1) // 2
    key = derive_seed(seed, fold, epoch, "dropout", bits=31)
    counter = torch.arange(steps * batch * half, device=device, dtype=torch.int32)
    lanes = _mix32(counter ^ key).view(torch.int16).view(steps, batch, 2 * half)
    return lanes[..., :hidden]


def dropout_threshold(p: float) -> int:
    return min(round(p * 65536), 65535) - 32768


def init_head(seed: int, fold: int, dim: int, hidden: int, classes: int) -> dict[str, torch.Tensor]:
    """nn.Linear's default init, U(+-1/sqrt(fan_in)), from a generator of (seed, fold): every :class:`Head`
    parameter (``head.head_parameters``), drawn in the module's order."""
    g = torch.Generator().manual_seed(derive_seed(seed, fold, "init"))
    shapes = head_parameters(dim, hidden, classes)
    out = {}
    for name, shape in shapes.items():
        fan_in = shapes[name.rsplit(".", 1)[0] + ".weight"][1]
        bound = 1.0 / math.sqrt(fan_in)
        out[name] = torch.rand(tuple(shape), generator=g, dtype=torch.float32).mul_(2 * bound).sub_(bound)
    return out


def epoch_order(
    seed: int, fold: int, epoch: int, rows: np.ndarray, views: int, first_view: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's permutation of ``rows`` and one training view per image (``first_view``..V-1; 0 when
    V == 1)."""
    g = torch.Generator().manual_seed(derive_seed(seed, fold, epoch, "order"))
    perm = torch.randperm(len(rows), generator=g).numpy()
    if views > 1:
        view = torch.randint(first_view, views, (len(rows),), generator=g).numpy()
    else:
        view = np.zeros(len(rows), dtype=np.int64)
    return rows[perm], view[perm]


def fold_statistics(
    features: torch.Tensor,
    row_sets: Sequence[np.ndarray],
    views: list[int],
    map_fn: Callable = map,
    block: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std ``[F, D]`` of each row set's features over ``views`` (a contiguous range), in one pass
    over fixed blocks of images (float64 sums added in block order, whatever ``map_fn`` runs them on); a
    feature with no spread gets std 1."""
    n = features.shape[0]
    member = torch.zeros(len(row_sets), n, dtype=torch.float64)
    for i, rows in enumerate(row_sets):
        member[i, torch.as_tensor(rows, dtype=torch.long)] = 1.0
    member = member.to(features.device)
    v0, v1 = views[0], views[-1] + 1
    if views != list(range(v0, v1)):
        raise ValueError("views must be a contiguous range")

    def sums(start: int, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        buf = torch.empty((chunk, v1 - v0, features.shape[2]), dtype=torch.float32, device=features.device)
        s1 = s2 = 0.0
        for a in range(start, min(n, start + block), chunk):
            b = min(a + chunk, start + block, n)
            x = buf[: b - a].copy_(features[a:b, v0:v1])
            s1 = s1 + member[:, a:b] @ x.sum(1).double()
            s2 = s2 + member[:, a:b] @ x.square_().sum(1).double()
        return s1, s2

    parts = list(map_fn(sums, range(0, n, block)))
    s1, s2 = sum(p[0] for p in parts), sum(p[1] for p in parts)
    count = (member.sum(1, keepdim=True) * len(views)).clamp_min(1.0)
    mean = s1 / count
    std = (s2 / count - mean.square()).clamp_min(0.0).sqrt()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return mean.float(), std.float()
