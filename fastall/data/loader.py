"""Image files -> uint8 ``[3, S, S]`` pixels: the one decode+resize, as a dataset and as batches.

Each file is decoded (``fastall.data.images.decode_image``) and resized (``fastall.preprocess.resize_uint8``)
on its own, channels_last for the fast uint8 kernel: exactly what `extract` feeds the backbone, so `predict`,
`verify` and `export` see the pixels the cache was made from. Bad files come back as a message instead of
pixels. With workers, decoding runs in DataLoader processes so that a GPU never waits for Pillow.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from fastall.data.fingerprint import EMPTY, Stamp, stamp_of
from fastall.data.images import decode_bytes, decode_image, read_image_file
from fastall.errors import FastallError
from fastall.preprocess import resize_uint8


def _resized(pixels: torch.Tensor, size: int) -> torch.Tensor:
    return resize_uint8(pixels[None].contiguous(memory_format=torch.channels_last), size)[0]


def decode_resized(path: str | Path, size: int) -> torch.Tensor:
    """uint8 ``[3, size, size]`` of one file (``BadImageError`` if it cannot be decoded)."""
    return _resized(decode_image(path), size)


def decode_resized_stamped(path: str | Path, size: int) -> tuple[torch.Tensor, Stamp]:
    """:func:`decode_resized` and the :class:`~fastall.data.fingerprint.Stamp` of the very bytes decoded."""
    data, st = read_image_file(path)
    return _resized(decode_bytes(data, path), size), stamp_of(data, st)


class ImageFiles(Dataset):
    """Item ``i``: ``(i, pixels, None)``, or ``(i, None, message)`` for a file that cannot be decoded."""

    def __init__(self, paths: Sequence[str | Path], size: int) -> None:
        self.paths, self.size = [Path(p) for p in paths], size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, decode_resized(self.paths[i], self.size), None
        except FastallError as err:
            return i, None, str(err).splitlines()[0]
        except Exception as err:  # noqa: BLE001 - a bad file must never stop the others
            return i, None, f"{self.paths[i]}: cannot decode ({type(err).__name__}: {err})"

    def stamped(self, i: int) -> tuple[torch.Tensor | None, str | None, Stamp]:
        """``(pixels, None, stamp)`` of file ``i``; ``(None, message, EMPTY)`` when it cannot be decoded."""
        try:
            pixels, stamp = decode_resized_stamped(self.paths[i], self.size)
            return pixels, None, stamp
        except FastallError as err:
            return None, str(err).splitlines()[0], EMPTY
        except Exception as err:  # noqa: BLE001 - a bad file must never stop the others
            return None, f"{self.paths[i]}: cannot decode ({type(err).__name__}: {err})", EMPTY


@dataclass
class Batch:
    """``images[k]`` is file ``paths[indices[k]]``; ``bad`` lists ``(index, message)`` of unreadable ones."""

    indices: list[int]
    images: torch.Tensor
    bad: list[tuple[int, str]] = field(default_factory=list)

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread, so that the copy to the GPU can overlap compute."""
        return Batch(self.indices, self.images.pin_memory(), self.bad)


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> Batch:
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, msg) for i, x, msg in items if x is None]
    images = torch.stack([x for _, x in good]) if good else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    return Batch([i for i, _ in good], images, bad)


def iter_batches(
    paths: Sequence[str | Path], size: int, batch_size: int, *, workers: int = 0, pin_memory: bool = False
) -> Iterator[Batch]:
    """Decode ``paths`` in order, ``batch_size`` files per batch (fewer good images where some are bad)."""
    if batch_size < 1:
        raise FastallError(f"batch size must be at least 1, got {batch_size}")
    loader = DataLoader(
        ImageFiles(paths, size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )
    yield from loader


def load_images(
    paths: Sequence[str | Path], size: int, batch_size: int = 16, *, needed_for: str
) -> torch.Tensor:
    """All of ``paths`` decoded and resized, ``[N, 3, size, size]``; a bad file is fatal (``needed_for``
    completes the message, e.g. "verify needs the original images")."""
    chunks = []
    for batch in iter_batches(paths, size, batch_size):
        if batch.bad:
            raise FastallError(f"{batch.bad[0][1]} ({needed_for})")
        chunks.append(batch.images)
    return torch.cat(chunks) if chunks else torch.empty(0, 3, size, size, dtype=torch.uint8)


def default_workers(device: torch.device | str) -> int:
    """Decoder processes: none on the CPU (the cores run the model), most cores for a GPU."""
    if torch.device(device).type == "cpu":
        return 0
    return max(1, min(16, (os.cpu_count() or 2) - 1))
