"""`fastall extract`: frozen ResNet-50 features of V views per image into a crash-safe HDF5 cache.

DataLoader workers decode and resize (uint8); the device does everything else: the shared preprocessing,
per-sample augmentation and the backbone under ``inference_mode`` + autocast. Each finished batch is saved as
a shard beside the target (see :class:`fastall.cache.PartialStore`); the cache appears only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch.utils.data import DataLoader

from fastall import __version__
from fastall.augment import AUGMENT_CONFIG, VIEW_PARAM_NAMES, draw_view_params
from fastall.backbone import load_backbone
from fastall.cache import (
    PartialStore,
    cache_key,
    cache_lock,
    diff_params,
    kill_point,
    read_cache,
    write_cache,
)
from fastall.data import Record, discover
from fastall.errors import CacheError, FastallError
from fastall.images import BadImageError, decode_image
from fastall.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess, resize_uint8

PREPROCESS = "v1: RGB uint8, resize bilinear+antialias (whole image, no crop), /255, [augment], mean/std"
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MAX_PENDING_WRITES = 2
CHUNK = 32  # images per worker task


@dataclass
class ExtractSummary:
    path: Path
    images: int
    views: int
    seconds: float
    computed: int = 0
    resumed: int = 0
    loop_seconds: float = 0.0
    cache_bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_existing: bool = False
    device: str = "cpu"
    amp_dtype: str = "fp32"
    key: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        """Images computed per second of the extraction loop (decode to stored shard)."""
        return self.computed / self.loop_seconds if self.loop_seconds > 0 else 0.0

    @property
    def forwards_per_s(self) -> float:
        return self.images_per_s * self.views


class _Images(torch.utils.data.Dataset):
    """Worker side: decode + resize to uint8 ``[3, S, S]`` and draw the view parameters of one image."""

    def __init__(self, records: list[Record], todo: list[int], size: int, seed: int, views: int) -> None:
        self.paths = [str(records[i].path) for i in todo]
        self.todo, self.size, self.seed, self.views = todo, size, seed, views

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, int, str]:
        index = self.todo[k]
        params = torch.from_numpy(draw_view_params(self.seed, [index], self.views)[0])
        try:
            pixels = decode_image(self.paths[k])[None].contiguous(memory_format=torch.channels_last)
            image, error = resize_uint8(pixels, self.size)[0], ""  # channels_last: the fast uint8 kernel
        except BadImageError as err:
            image, error = torch.zeros(3, self.size, self.size, dtype=torch.uint8), str(err)
        return image, params, index, error


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise FastallError(f"--device {name!r}: use auto, cuda or cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FastallError(f"--device {name}: CUDA is not available here (use --device cpu or auto)")
    return torch.device(name)


def _fingerprint(records: list[Record]) -> str:
    h = hashlib.sha256()
    for r in records:
        try:
            size = os.stat(r.path).st_size
        except OSError:
            size = -1
        h.update(json.dumps([r.rel_path, r.label, r.patient, r.source, size]).encode())
    return h.hexdigest()


def key_params_for(*, info: Any, image_size: int, views: int, seed: int, amp: bool, amp_dtype: str,
                   records: list[Record], class_names: list[str]) -> dict[str, Any]:
    """Every parameter that changes the features (and nothing that does not)."""
    return {
        "backbone": info.name, "weights": info.weights, "weights_sha256": info.sha256,
        "feature_dim": info.feature_dim, "image_size": image_size, "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD), "preprocess": PREPROCESS, "views": views, "augment": AUGMENT_CONFIG,
        "seed": seed, "amp": amp, "amp_dtype": amp_dtype if amp else "fp32",
        "dataset_fingerprint": _fingerprint(records), "dataset_images": len(records),
        "dataset_classes": list(class_names),
    }


def _check_args(views: int, image_size: int, seed: int, batch_size: int | None, workers: int | None,
                amp_dtype: str) -> None:
    checks = [(views < 1, f"--views must be at least 1, got {views}"),
              (image_size < 32, f"--image-size must be at least 32, got {image_size}"),
              (seed < 0, f"--seed must be non-negative, got {seed}"),
              (batch_size is not None and batch_size < 1, f"--batch-size must be >= 1, got {batch_size}"),
              ((workers or 0) < 0, f"--workers must be non-negative, got {workers}"),
              (amp_dtype not in AMP_DTYPES, f"--amp-dtype must be bf16 or fp16, got {amp_dtype!r}")]
    problems = [message for failed, message in checks if failed]
    if problems:
        raise FastallError("; ".join(problems))


def _existing_matches(out: Path, key_params: dict[str, Any], overwrite: bool) -> bool:
    """True when a complete cache with this key exists; refuse another key unless ``overwrite``."""
    if not out.exists():
        return False
    try:
        old = read_cache(out, load_features=False)
    except CacheError as err:
        if overwrite:
            return False
        raise CacheError(f"{out} exists but is not a valid cache ({str(err).removeprefix(str(out) + ': ')}); "
                         "use --overwrite to replace it") from None
    if old.key == cache_key(key_params):
        return True
    if not overwrite:
        diffs = "; ".join(diff_params(old.key_params, key_params))
        raise CacheError(f"{out} was made with other settings (cache -> now): {diffs}; "
                         "use --overwrite to replace it")
    return False


def _open_partial(store: PartialStore, key_params: dict[str, Any], overwrite: bool, warn: Callable) -> None:
    meta = store.meta()
    if meta is not None and meta.get("key") != cache_key(key_params):
        if not meta:
            warn(f"{store.dir}: unreadable progress metadata, starting over")
        elif not overwrite:
            raise CacheError(f"{store.dir} holds an unfinished extract with other settings (partial -> now): "
                             + "; ".join(diff_params(meta.get("key_params", {}), key_params))
                             + "; use --overwrite to discard it")
        store.remove()
        meta = None
    if meta is None:
        store.start(key_params)


class _Writer:
    """Saves shards on a background thread so the device never waits for the disk."""

    def __init__(self, store: PartialStore) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: list[Future] = []

    def submit(self, indices: np.ndarray, feats: torch.Tensor, params: np.ndarray,
               skipped: list[tuple[int, str]], done: Callable[[int], None]) -> None:
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
            self.store.write_shard(indices, feats.numpy(), params, skipped)
            kill_point("shard")
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


def extract(data: str | Path, out: str | Path, *, views: int = 8, image_size: int = 224,
            weights: str = "imagenet1k_v1", device: str = "auto", amp: bool = True, amp_dtype: str = "bf16",
            batch_size: int | None = None, workers: int | None = None, seed: int = 0,
            include: Iterable[str] = (), overwrite: bool = False, skip_bad: bool = False,
            patient_regex: str | None = None, progress: bool = True,
            warn: Callable[[str], None] | None = None) -> ExtractSummary:
    """Compute (or resume, or find already done) the feature cache of ``data`` at ``out``."""
    start = time.perf_counter()
    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        if warn is not None:
            warn(message)

    _check_args(views, image_size, seed, batch_size, workers, amp_dtype)
    dev = _device(device)
    out = Path(out)
    if out.is_dir():
        raise FastallError(f"--out {out} is a folder; give a file name such as {out / 'features.h5'}")
    if not out.parent.is_dir():
        raise FastallError(f"--out {out}: folder {out.parent} does not exist")
    include = tuple(include)
    ds = discover(data, patient_regex=patient_regex, **({"include": include} if include else {}))
    ds.check(training=False)
    for message in ds.warnings + [str(p) for p in ds.problems]:
        note(message)
    records = ds.records
    with cache_lock(out, warn=note):
        model, info = load_backbone(weights, seed=seed)
        for message in info.warnings:
            note(message)
        key_params = key_params_for(info=info, image_size=image_size, views=views, seed=seed, amp=amp,
                                    amp_dtype=amp_dtype, records=records, class_names=ds.class_names)
        compute = key_params["amp_dtype"]
        summary = ExtractSummary(path=out, images=len(records), views=views, seconds=0.0, device=str(dev),
                                 amp_dtype=compute, key=cache_key(key_params), warnings=warnings)
        store = PartialStore(out)
        if _existing_matches(out, key_params, overwrite):
            if store.meta() is not None and store.meta().get("key") == summary.key:
                store.remove()
            old = read_cache(out, load_features=False)
            summary.images, summary.skipped, summary.skipped_existing = old.n_images, old.skipped, True
            summary.cache_bytes, summary.seconds = out.stat().st_size, time.perf_counter() - start
            return summary
        _open_partial(store, key_params, overwrite, note)
        done, bad = store.load(len(records), views, info.feature_dim, warn=note)
        todo = [i for i in range(len(records)) if i not in done and i not in bad]
        summary.resumed = len(done)
        if done or bad:
            note(f"resuming: {len(done)} images already done in {store.dir}, {len(todo)} to go")
        loop_start = time.perf_counter()
        if todo:
            _run(model, records, todo, store, dev=dev, size=image_size, views=views, dim=info.feature_dim,
                 seed=seed, amp=AMP_DTYPES[amp_dtype] if amp else None, batch_size=batch_size,
                 workers=workers, skip_bad=skip_bad, progress=progress)
        summary.loop_seconds = time.perf_counter() - loop_start
        summary.computed = len(todo)
        kill_point("finalize")
        provenance = _provenance(dev, info, batch_size, workers, data)
        _finalize(store, out, records, ds.class_names, views, info.feature_dim, key_params, provenance)
        kill_point("cleanup")
        store.remove()
    final = read_cache(out, load_features=False)
    summary.images, summary.skipped = final.n_images, final.skipped
    summary.cache_bytes, summary.seconds = out.stat().st_size, time.perf_counter() - start
    return summary


def _run(model: torch.nn.Module, records: list[Record], todo: list[int], store: PartialStore, *,
         dev: torch.device, size: int, views: int, dim: int, seed: int, amp: torch.dtype | None,
         batch_size: int | None, workers: int | None, skip_bad: bool, progress: bool) -> None:
    cuda = dev.type == "cuda"
    batch_size = batch_size or (256 if cuda else 32)
    cores = os.cpu_count() or 1
    workers = workers if workers is not None else (max(1, min(10, cores - 2)) if cuda else min(1, cores - 1))
    loader = DataLoader(_Images(records, todo, size, seed, views), batch_size=min(batch_size, CHUNK),
                        shuffle=False, num_workers=workers, pin_memory=cuda,
                        prefetch_factor=4 if workers else None)
    model = model.to(dev)
    autocast = torch.autocast(device_type=dev.type, dtype=amp or torch.float32, enabled=amp is not None)
    writer = _Writer(store)
    try:
        with _progress(len(todo), enabled=progress) as advance, torch.inference_mode():
            for x, params, indices, errors in _batches(loader, batch_size, dev):
                bad = [k for k, e in enumerate(errors) if e]
                if bad and not skip_bad:
                    raise FastallError(f"{errors[bad[0]]} (use --skip-bad to skip unreadable images)")
                skipped = [(int(indices[k]), errors[k]) for k in bad]
                if bad:
                    keep = torch.tensor([k for k in range(len(errors)) if not errors[k]], dtype=torch.long)
                    x, params, indices = x[keep.to(dev)], params[keep], indices[keep]
                feats = torch.empty(len(indices), views, dim, dtype=torch.float16, device=dev)
                p = params.to(dev, non_blocking=True)
                for v in range(views if len(indices) else 0):
                    xv = preprocess(x, size, IMAGENET_MEAN, IMAGENET_STD, p[:, v] if v else None)
                    feats[:, v] = _forward(model, xv, autocast).to(torch.float16)
                writer.submit(indices.numpy(), feats, params.numpy(), skipped, advance)
    except BaseException:
        writer.close(raise_errors=False)
        raise
    writer.close()


def _batches(loader: DataLoader, batch_size: int, dev: torch.device) -> Iterator[tuple]:
    """Regroup the workers' small chunks (fast start, little shared memory) into forward batches.

    Images go to the device chunk by chunk (pinned, non-blocking); params and indices stay on the host.
    """
    parts: list[tuple] = []
    count = 0
    for images, params, indices, errors in loader:
        parts.append((images.to(dev, non_blocking=True), params, indices, list(errors)))
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
    return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
            torch.cat([p[2] for p in parts]), [e for p in parts for e in p[3]])


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.1f} img/s" if task.speed else "-- img/s", style="progress.data.speed")


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda n: None
        return
    columns = (TextColumn("[bold]extract"), BarColumn(), MofNCompleteColumn(), _Rate(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("extract", total=total)
        yield lambda n: bar.advance(task, n)


def _provenance(dev: torch.device, info: Any, batch_size: int | None, workers: int | None,
                data: str | Path) -> dict[str, Any]:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"fastall_version": __version__, "torch_version": str(torch.__version__),
            "torchvision_version": str(torchvision.__version__), "device": str(dev), "device_name": name,
            "batch_size": batch_size or 0, "workers": -1 if workers is None else workers,
            "weights_source": info.source, "data_root": str(Path(data).resolve()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _finalize(store: PartialStore, out: Path, records: list[Record], class_names: list[str], views: int,
              dim: int, key_params: dict[str, Any], provenance: dict[str, Any]) -> None:
    done, bad = store.load(len(records), views, dim)
    missing = [i for i in range(len(records)) if i not in done and i not in bad]
    if missing:
        raise CacheError(f"{store.dir}: {len(missing)} images still missing after the run; run extract again")
    rows = sorted(done)
    if not rows:
        raise FastallError(f"none of the {len(records)} images could be decoded; nothing to cache")
    features = np.stack([done[i][0] for i in rows])
    params = np.stack([done[i][1] for i in rows])
    picked = [records[i] for i in rows]
    write_cache(out, features=features, labels=np.array([r.label for r in picked], dtype=np.int64),
                class_names=class_names, patients=[r.patient for r in picked],
                paths=[r.rel_path for r in picked], sources=[r.source for r in picked], view_params=params,
                view_param_names=list(VIEW_PARAM_NAMES), key_params=key_params, provenance=provenance,
                skipped=[(records[i].rel_path, bad[i]) for i in sorted(bad)])


def describe(summary: ExtractSummary) -> list[str]:
    """The end-of-run summary, one line each."""
    size = f"{summary.cache_bytes / 2**20:,.1f} MiB"
    if summary.skipped_existing:
        lines = [f"{summary.path} is already complete with these settings ({summary.images} images x "
                 f"{summary.views} views, {size}); nothing to do"]
    else:
        s = summary
        resumed = f"; {s.resumed} resumed" if s.resumed else ""
        lines = [f"{s.path}: {s.images} images x {s.views} views in {s.seconds:,.1f} s ({s.computed} done "
                 f"at {s.images_per_s:,.1f} img/s = {s.forwards_per_s:,.1f} forwards/s on {s.device}, "
                 f"{s.amp_dtype}{resumed}), cache {size}"]
    if summary.skipped:
        lines.append(f"skipped {len(summary.skipped)} unreadable image(s):")
        lines += [f"  {path}: {reason}" for path, reason in summary.skipped]
    return lines
