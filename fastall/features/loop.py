"""The device loop of `extract`: decoding workers -> preprocessing + augmentation -> backbone -> shards.

Workers decode and resize small chunks (uint8, channels_last for the fast resize kernel) and draw each
image's view parameters; the main process regroups chunks into forward batches on the device, runs every
view under ``inference_mode`` + autocast, and hands the float16 features to a writer thread that saves one
shard per batch, so neither the device nor the disk waits for the other.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from fastall.data.loader import ImageFiles
from fastall.data.records import Record
from fastall.errors import FastallError
from fastall.features.augment import draw_view_params, resolve_fill
from fastall.features.extract_config import ExtractConfig
from fastall.features.mapshards import save_maps
from fastall.features.shards import PartialStore
from fastall.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess
from fastall.system import faults
from fastall.system.events import Reporter, silent

MAX_PENDING_WRITES = 2
CHUNK = 32  # images per worker task: the first batch starts at once, little shared memory in flight
MAX_GPU_BATCH = 256
GPU_MEMORY_SHARE = (
    0.6  # of the free memory a forward batch may take (the rest: views, the loader, other work)
)
BF16_WEIGHTS_PARAMS = 300_000_000  # from this size (ViT-L/G) bf16 autocast also keeps the weights in bf16


class ImageViews(torch.utils.data.Dataset):
    """Worker side: one image decoded + resized (``ImageFiles``, uint8 ``[3, S, S]``), its fill resolved and
    its view parameters drawn, and the stamp (content hash, size, mtime) of the bytes decoded, as four int64.
    An unreadable image comes back as zeros with its message.
    """

    def __init__(
        self, records: list[Record], todo: list[int], size: int, seed: int, views: int, fill: str = "black"
    ) -> None:
        self.files = ImageFiles([records[i].path for i in todo], size)
        self.todo, self.size, self.seed, self.views, self.fill = todo, size, seed, views, fill

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, int, str, torch.Tensor]:
        index = self.todo[k]
        image, error, stamp = self.files.stamped(k)
        if image is None:
            image = torch.zeros(3, self.size, self.size, dtype=torch.uint8)
        fill = resolve_fill(image[None], self.fill)
        params = torch.from_numpy(draw_view_params(self.seed, [index], self.views, fill)[0])
        return image, params, index, error or "", torch.tensor(stamp.as_ints(), dtype=torch.int64)


class _Writer:
    """Saves shards on a background thread so the device never waits for the disk."""

    def __init__(self, store: PartialStore) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: list[Future] = []

    def submit(
        self,
        indices: np.ndarray,
        feats: torch.Tensor,
        params: np.ndarray,
        skipped: list[tuple[int, str]],
        done: Callable[[int], None],
        stamps: np.ndarray | None = None,
        paths: list[str] = (),
        maps: torch.Tensor | None = None,
    ) -> None:
        event = None
        if feats.is_cuda:
            host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
            host.copy_(feats, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            feats = host

        def write() -> None:
            if event is not None:
                event.synchronize()
            check_finite(feats.numpy(), paths)
            if maps is not None:  # before the shard that marks these images done
                save_maps(self.store.dir, [int(i) for i in indices], maps.numpy())
            self.store.write_shard(indices, feats.numpy(), params, skipped, stamps=stamps)
            faults.reached("shard")
            done(len(indices) + len(skipped))

        self.pending.append(self.pool.submit(write))
        while len(self.pending) > MAX_PENDING_WRITES or (self.pending and self.pending[0].done()):
            self.pending.pop(0).result()

    def close(self, raise_errors: bool = True) -> None:
        """Wait for every pending shard (work already done is kept even when the run fails)."""
        self.pool.shutdown(wait=True)
        errors = [f.exception() for f in self.pending]
        self.pending.clear()
        first = next((e for e in errors if e is not None), None)
        if first is not None and raise_errors:
            raise first


def _forward(model: torch.nn.Module, x: torch.Tensor, autocast: Any) -> torch.Tensor:
    if x.shape[0] == 1:  # oneDNN takes another path for batch 1: keep features batch-size independent
        return _forward(model, x.expand(2, *x.shape[1:]), autocast)[:1]
    with autocast:
        return model(x.contiguous(memory_format=torch.channels_last))


def prepare_model(
    model: torch.nn.Module, dev: torch.device, amp: torch.dtype | None
) -> tuple[torch.nn.Module, Any]:
    """The backbone on ``dev`` for the precision chosen (``amp``: the autocast dtype, None for fp32), and the
    autocast context its forwards run in. Large models under bf16 on a GPU keep their weights in bf16."""
    model = model.to(dev)
    big = sum(p.numel() for p in model.parameters()) >= BF16_WEIGHTS_PARAMS
    if dev.type == "cuda" and amp == torch.bfloat16 and big:
        model = model.to(torch.bfloat16)
    return model, torch.autocast(device_type=dev.type, dtype=amp or torch.float32, enabled=amp is not None)


def run(
    model: torch.nn.Module,
    info: Any,
    records: list[Record],
    todo: list[int],
    store: PartialStore,
    *,
    config: ExtractConfig,
    dev: torch.device,
    amp: torch.dtype | None,
    reporter: Reporter | None = None,
) -> int:
    """Extract ``todo`` into ``store`` with the backbone ``model`` (``info``: its
    :class:`~fastall.features.backbone.BackboneInfo`); returns the batch size used (``config.batch_size``, or
    sized here). Progress is the ``extract`` task of ``reporter`` (unit ``img``)."""
    reporter = reporter or silent()
    cuda = dev.type == "cuda"
    size, views, dim = info.input_size(config.image_size), config.views, info.feature_dim
    norm = (getattr(info, "mean", IMAGENET_MEAN), getattr(info, "std", IMAGENET_STD))
    model, autocast = prepare_model(model, dev, amp)
    batch_size = config.batch_size or auto_batch_size(model, dev, size, autocast)
    cores = os.cpu_count() or 1
    # CPU: decoding is ~1% of a forward; a worker process would only steal cores from torch's thread pool
    workers = config.workers if config.workers is not None else (max(1, cores - 2) if cuda else 0)
    loader = DataLoader(
        ImageViews(records, todo, size, config.seed, views, config.fill),
        batch_size=min(batch_size, CHUNK),
        shuffle=False,
        num_workers=workers,
        pin_memory=cuda,
        prefetch_factor=4 if workers else None,
    )
    writer = _Writer(store)
    with reporter.task("extract", len(todo), unit="img") as advance:
        try:
            with torch.inference_mode():
                for x, params, indices, errors, stamps in _batches(loader, batch_size, dev):
                    bad = [k for k, e in enumerate(errors) if e]
                    if bad and not config.skip_bad:
                        raise FastallError(f"{errors[bad[0]]} (use --skip-bad to skip unreadable images)")
                    skipped = [(int(indices[k]), errors[k]) for k in bad]
                    if bad:
                        keep = torch.tensor([k for k, e in enumerate(errors) if not e], dtype=torch.long)
                        x, params, indices, stamps = (
                            x[keep.to(dev)],
                            params[keep],
                            indices[keep],
                            stamps[keep],
                        )
                    maps = [None] * (config.map_views or views) if config.maps else None
                    feats = _views(model, x, params, size, views, dim, autocast, norm, maps)
                    paths = [records[int(i)].rel_path for i in indices]
                    stacked = torch.stack(maps, 1).cpu() if maps is not None and len(x) else None
                    writer.submit(
                        indices.numpy(),
                        feats,
                        params.numpy(),
                        skipped,
                        advance,
                        stamps.numpy(),
                        paths,
                        stacked,
                    )
        except BaseException:
            writer.close(raise_errors=False)
            raise
        writer.close()
    return batch_size


def auto_batch_size(model: torch.nn.Module, dev: torch.device, size: int, autocast: Any) -> int:
    """CPU: 32. GPU: the largest power of two up to 256 whose forward fits in a share of the free memory,
    from the peak memory of one probe forward of 4 images."""
    if dev.type != "cuda":
        return 32
    probe = 4
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    x = torch.zeros(probe, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast:
        model(x)
    per_image = max(1.0, (torch.cuda.max_memory_allocated(dev) - base) / probe)
    del x
    torch.cuda.empty_cache()
    return fit_batch(per_image, torch.cuda.mem_get_info(dev)[0], dev)


def fit_batch(per_image: float, free: int, dev: torch.device | str = "cuda") -> int:
    """The largest power of two up to 256 images of ``per_image`` bytes that fits a share of ``free``."""
    fit = int(GPU_MEMORY_SHARE * free / per_image)
    if fit < 1:
        raise FastallError(
            f"the backbone needs ~{per_image / 2**20:.0f} MiB per image and {free / 2**20:.0f} MiB are free "
            f"on {dev}: use --precision bf16, a smaller --image-size, or --device cpu"
        )
    return min(MAX_GPU_BATCH, 1 << (fit.bit_length() - 1))


def check_finite(feats: np.ndarray, paths: list[str]) -> None:
    """Refuse a batch whose features hold NaN or Inf (broken weights, an fp16 overflow), naming an image."""
    if feats.size and not (np.isfinite(feats.max()) and np.isfinite(feats.min())):
        rows = np.flatnonzero(~np.isfinite(feats.reshape(len(feats), -1)).all(axis=1))
        first = paths[int(rows[0])] if len(paths) > rows[0] else f"row {int(rows[0])}"
        raise FastallError(
            f"the backbone gave non-finite features (NaN/Inf) for {len(rows)} of {len(feats)} images in a "
            f"batch, first {first}: the weights hold NaN/Inf or the values overflow float16; nothing of this "
            "batch was stored"
        )


def _views(
    model: torch.nn.Module,
    x: torch.Tensor,
    p: torch.Tensor,
    size: int,
    views: int,
    dim: int,
    autocast: Any,
    norm: tuple[Sequence[float], Sequence[float]] = (IMAGENET_MEAN, IMAGENET_STD),
    maps: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """float16 ``[B, V, D]``: view 0 plain, view v augmented with ``p[:, v]`` (host parameters). ``maps``:
    with a :class:`~fastall.features.cut.MapSplit` model, the fp16 map at the cut of each of the first
    ``len(maps)`` views, filled in place."""
    feats = torch.empty(x.shape[0], views, dim, dtype=torch.float16, device=x.device)
    for v in range(views if x.shape[0] else 0):
        xv = preprocess(x, size, *norm, p[:, v] if v else None)
        feats[:, v] = _forward(model, xv, autocast).to(torch.float16)
        if maps is not None and v < len(maps):
            maps[v] = model.kept[: x.shape[0]].to(torch.float16)
    return feats


def _batches(loader: DataLoader, batch_size: int, dev: torch.device) -> Iterator[tuple]:
    """Regroup the workers' small chunks (fast start, little shared memory) into forward batches.

    Images go to the device chunk by chunk (pinned, non-blocking); params and indices stay on the host.
    """
    parts: list[tuple] = []
    count = 0
    for images, params, indices, errors, stamps in loader:
        parts.append((images.to(dev, non_blocking=True), params, indices, list(errors), stamps))
        count += len(errors)
        while count >= batch_size:
            merged = _merge(parts)
            take = min(batch_size, count)
            yield tuple(m[:take] for m in merged)
            rest = tuple(m[take:] for m in merged)
            count -= take
            parts = [rest] if count else []
    if count:
        yield _merge(parts)


def _merge(parts: list[tuple]) -> tuple:
    if len(parts) == 1:
        return parts[0]
    return tuple(
        [e for p in parts for e in p[k]]
        if isinstance(parts[0][k], list)
        else torch.cat([p[k] for p in parts])
        for k in range(len(parts[0]))
    )
