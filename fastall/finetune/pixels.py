"""End-to-end maps: decode, resize, augment with the recorded view parameters and run the frozen front, per
batch, with torch's own DataLoader. The engine trains from it exactly as from a store; the equivalence tests
and ``benchmarks/finetune_speed.py`` (the end-to-end baseline) use it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fastall.data.loader import decode_resized
from fastall.features.cut import at_cut
from fastall.preprocess import preprocess


class _PlanImages(Dataset):
    """Item ``b``: the uint8 ``[B, 3, S, S]`` images of batch ``b`` of a plan (decoded in a worker)."""

    def __init__(
        self, paths: Sequence[Path], size: int, plan: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> None:
        self.paths, self.size, self.plan = paths, size, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, b: int) -> torch.Tensor:
        return torch.stack([decode_resized(self.paths[int(i)], self.size) for i in self.plan[b][0]])


class PixelSource:
    """Maps at the cut computed from the images: row ``i`` is ``paths[i]``, view ``v`` is augmented with
    ``view_params[i, v]``; ``front`` is the frozen front (:func:`~fastall.features.cut.cut_backbone`)."""

    def __init__(
        self,
        front: nn.Module,
        paths: Sequence[str | Path],
        view_params: np.ndarray,
        size: int,
        norm: tuple[Sequence[float], Sequence[float]],
        workers: int = 0,
    ) -> None:
        self.front, self.paths, self.params = front.eval(), [Path(p) for p in paths], view_params
        self.size, self.norm, self.workers = size, norm, workers

    def maps(self, images: torch.Tensor, rows: np.ndarray, views: np.ndarray) -> torch.Tensor:
        """fp32 maps (fp16 values) of uint8 ``images`` (rows ``rows``) in views ``views``."""
        p = torch.from_numpy(np.ascontiguousarray(self.params[rows, views], dtype=np.float32))
        with torch.no_grad():
            x = preprocess(images, self.size, *self.norm, p)
            if x.shape[0] == 1:  # as the store's maps: oneDNN's batch-1 path differs
                return at_cut(
                    self.front(x.expand(2, *x.shape[1:]).contiguous(memory_format=torch.channels_last))[:1]
                )
            return at_cut(self.front(x.contiguous(memory_format=torch.channels_last)))

    def batches(self, plan: Sequence[tuple[np.ndarray, np.ndarray]]) -> Iterator[torch.Tensor]:
        loader = DataLoader(
            _PlanImages(self.paths, self.size, plan),
            batch_size=None,
            num_workers=self.workers,
            prefetch_factor=2 if self.workers else None,
            generator=torch.Generator(),  # its seed draw must not move the global stream (dropout)
        )
        for (rows, views), images in zip(plan, loader, strict=True):
            yield self.maps(images, np.asarray(rows), np.asarray(views))
