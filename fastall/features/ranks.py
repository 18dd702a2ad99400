"""Which share of an extract this process does, and how the shares meet: one process (``Share()``, the
default) or one rank of a torchrun job (``Share(env, timeout)``).

Every rank extracts a strided share of the images into its own shard store
(``CACHE.h5.partial/rank-R-of-W/`` beside the cache, or the same under ``--scratch DIR``, node-local); the
finished arrays reach rank 0 through the process group, so rank 0 never reads another rank's disk, and writes
the one cache, bit for bit what one process writes. One process is the same path with a group of one
(:class:`Solo`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastall.data.fingerprint import Stamp
from fastall.errors import CacheError, FastallError
from fastall.features.augment import VIEW_PARAM_NAMES
from fastall.features.cache import cache_key, diff_params
from fastall.features.shards import PartialStore, partial_folder, rank_folder
from fastall.system.distributed import DEFAULT_TIMEOUT, DistEnv, Group, rank_device, share

ALONE = DistEnv(0, 1, 0)


@dataclass(frozen=True)
class Share:
    """This process's part of an extract: ``env`` None for the whole (one process), else its torchrun rank;
    ``timeout``: seconds a rank waits for an unresponsive other rank."""

    env: DistEnv | None = None
    timeout: float = DEFAULT_TIMEOUT

    @property
    def ranked(self) -> bool:
        return self.env is not None

    @property
    def rank(self) -> DistEnv:
        """This process's place (one process: rank 0 of 1)."""
        return self.env or ALONE

    def indices(self, n: int) -> range:
        """The images (of ``n``) this process extracts."""
        return share(n, self.rank.rank, self.rank.world)

    def device(self, device: str) -> str:
        """A rank's own GPU for ``cuda``/``auto`` (one process: ``device`` as given)."""
        return rank_device(device, self.env) if self.env is not None else device

    def shard_folder(self, out: Path, scratch: str | Path | None) -> tuple[Path, Path]:
        """The unfinished work's folder of the whole extract, and of this process's shards in it."""
        base = partial_folder(out, scratch)
        return base, rank_folder(base, self.rank.rank, self.rank.world)

    @contextmanager
    def group(self, dev: torch.device) -> Iterator[Group | Solo]:
        if self.env is None:
            yield Solo()
            return
        with Group(self.env, dev, self.timeout) as group:
            yield group


class Solo:
    """The process group of one process: the collectives of :class:`~fastall.system.distributed.Group`,
    answered at once."""

    env = ALONE

    def wait(self) -> None:
        return None

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj]

    def gather_arrays(self, arrays: list[np.ndarray]) -> list[list[np.ndarray]]:
        return [arrays]


def agree(states: list[dict[str, Any]], rank: int) -> None:
    """Raise this rank's error, else the first other rank's, else a disagreement on the cache key."""
    errors = [(r, s["error"]) for r, s in enumerate(states) if s["error"]]
    if errors:
        mine = states[rank]["error"]
        raise FastallError(mine or f"rank {errors[0][0]}: {errors[0][1]}")
    first = states[0].get("key_params")
    for r, state in enumerate(states[1:], start=1) if first is not None else ():
        if cache_key(state["key_params"]) != cache_key(first):
            raise FastallError(
                f"rank {r} would extract something else than rank 0 (rank 0 -> rank {r}): "
                + "; ".join(diff_params(first, state["key_params"]))
                + "; every rank needs the same data and settings"
            )


def join_shards(
    group: Group | Solo, store: PartialStore, n: int, views: int, dim: int, key: str
) -> tuple[list[int], np.ndarray, np.ndarray, dict[int, str], dict[int, Stamp]] | None:
    """Every rank's finished rows gathered on rank 0, checked and put in index order.

    Rank 0 gets ``(rows, features [N, V, D], params [N, V, P], skipped {index: reason}, content stamps
    {index: Stamp})``; the others None.
    Every rank raises the same :class:`CacheError` when the shards do not cover each image exactly once, or
    hold another cache key or shape.
    """
    done, bad = store.load(n, views, dim)
    rows = sorted(done)
    n_params = done[rows[0]][1].shape[-1] if rows else len(VIEW_PARAM_NAMES)
    mine = {
        "key": (store.meta() or {}).get("key"),
        "rows": rows,
        "bad": bad,
        "shapes": [[views, dim], [views, n_params]],
        "stamps": {i: s.as_ints() for i, s in store.stamps().items()},
    }
    parts = group.all_gather(mine)
    problem = coverage_problem(parts, n, key)
    if problem:
        raise CacheError(f"{store.dir.parent}: {problem}; use --overwrite to start over")
    if not group.env.is_main:
        feats = np.stack([done[i][0] for i in rows]) if rows else np.empty((0, views, dim), np.float16)
        params = np.stack([done[i][1] for i in rows]) if rows else np.empty((0, views, n_params), np.float32)
        del done
        group.gather_arrays([feats, params])
        return None
    nothing = [np.empty((0, views, dim), np.float16), np.empty((0, views, n_params), np.float32)]
    arrays = group.gather_arrays(nothing)
    every = np.sort(np.concatenate([np.asarray(p["rows"], dtype=np.int64) for p in parts]))
    features = np.empty((len(every), views, dim), dtype=np.float16)
    view_params = np.empty((len(every), views, n_params), dtype=np.float32)
    for at, i in zip(np.searchsorted(every, rows).tolist(), rows, strict=True):
        features[at], view_params[at] = done.pop(i)
    for part, (f, p) in zip(parts[1:], arrays[1:], strict=True):
        at = np.searchsorted(every, np.asarray(part["rows"], dtype=np.int64))
        features[at], view_params[at] = f, p
    skipped = {i: reason for part in parts for i, reason in part["bad"].items()}
    stamps = {i: Stamp.from_ints(row) for part in parts for i, row in part.get("stamps", {}).items()}
    return every.tolist(), features, view_params, skipped, stamps


def coverage_problem(parts: list[dict[str, Any]], n: int, key: str) -> str | None:
    """What is wrong with the ranks' shards together (None: every image exactly once, one key, one shape)."""
    keys = [r for r, p in enumerate(parts) if p["key"] != key]
    if keys:
        return f"the shards of rank {keys[0]} belong to another extract (cache key {parts[keys[0]]['key']})"
    shapes = {repr(p["shapes"]) for p in parts}
    if len(shapes) > 1:
        return f"the ranks' shards have different shapes: {', '.join(sorted(shapes))}"
    seen = np.zeros(n, dtype=np.int64)
    for p in parts:
        for indices in (p["rows"], list(p["bad"])):
            if indices and (min(indices) < 0 or max(indices) >= n):
                return f"shard indices outside 0..{n - 1}"
            np.add.at(seen, np.asarray(indices, dtype=np.int64), 1)
    twice, missing = np.flatnonzero(seen > 1), np.flatnonzero(seen == 0)
    if twice.size:
        return f"{twice.size} images are in more than one rank's shards (first: image {twice[0]})"
    if missing.size:
        return f"{missing.size} images are in no rank's shards (first: image {missing[0]})"
    return None
