"""Image files -> batches of uint8 ``[B, 3, S, S]`` for inference, decoding ahead of the model.

Each file is decoded (``fastall.data.images.decode_image``) and resized
(``fastall.preprocess.resize_uint8``) on
its own, exactly as ``extract`` does; bad files come back as ``(index, message)`` instead of pixels. With
workers, decoding runs in DataLoader processes so that a GPU never waits for Pillow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from fastall.data.discover import IMAGE_EXTENSIONS
from fastall.data.images import decode_image
from fastall.errors import FastallError
from fastall.preprocess import resize_uint8


@dataclass
class Batch:
    """``images[k]`` is file ``paths[indices[k]]``; ``bad`` lists ``(index, message)`` of unreadable ones."""

    indices: list[int]
    images: torch.Tensor
    bad: list[tuple[int, str]] = field(default_factory=list)

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread, so that the copy to the GPU can overlap compute."""
        return Batch(self.indices, self.images.pin_memory(), self.bad)


class _Files(Dataset):
    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, resize_uint8(decode_image(self.paths[i]), self.size), None
        except FastallError as err:
            return i, None, str(err).splitlines()[0]
        except Exception as err:  # noqa: BLE001 - a bad file must never stop the others
            return i, None, f"{self.paths[i]}: cannot decode ({type(err).__name__}: {err})"


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
        _Files([Path(p) for p in paths], size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )
    yield from loader


def default_workers(device: torch.device | str) -> int:
    """Decoder processes: none on the CPU (the cores run the model), most cores for a GPU."""
    if torch.device(device).type == "cpu":
        return 0
    return max(1, min(16, (os.cpu_count() or 2) - 1))


def find_images(inputs: Iterable[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given plus image files found under folders (recursively, sorted, no duplicates).

    Returns ``(paths, problems)``; problems are missing inputs or unreadable folders, as ``(path, reason)``.
    """
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            found.append(path)

    for raw in inputs:
        top = Path(raw)
        if top.is_dir():
            for path in _walk(top, problems):
                add(path)
        elif top.is_file() or top.is_symlink():
            add(top)
        else:
            problems.append((str(top), "no such file or folder"))
    return found, problems


def _walk(top: Path, problems: list[tuple[str, str]]) -> list[Path]:
    out: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()

    def onerror(err: OSError) -> None:
        problems.append((str(err.filename), f"cannot read folder ({err.strerror or err})"))

    for folder, dirs, files in os.walk(top, onerror=onerror, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:
            problems.append((folder, "symlink loop (folder already visited)"))
            dirs[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                out.append(Path(folder) / name)
    return out
