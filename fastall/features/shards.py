"""Crash safety for `extract`: the cache lock and partial work.

Nothing here is ever half-written: every file goes to a temporary name, is fsynced and renamed. A ``kill -9``
at any moment loses at most the batch being written; the cache itself is assembled only when all is done.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from fastall.data.fingerprint import Stamp
from fastall.errors import CacheError
from fastall.system.files import atomic_write, describe_write_error, is_disk_full
from fastall.system.procs import holder_alive, pid_alive, process_start


@contextmanager
def cache_lock(target: str | Path, warn: Any = None) -> Iterator[Path]:
    """Hold ``TARGET.lock`` (pid, host, start time); refuse a live holder, take over a stale one.

    The lock records which process holds it (``pid_start``, see :func:`process_start`), so that a pid reused
    after a restart (this process's own, pid 1) is recognised as stale.
    """
    target = Path(target)
    lock = target.with_name(target.name + ".lock")
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pid_start": process_start(os.getpid()),
    }
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _take_over_stale(lock, me["host"], warn)
            continue
        except OSError as err:
            raise CacheError(
                f"{target}: cannot write in {target.parent.resolve()}: {err.strerror or err}"
            ) from err
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:
        raise CacheError(f"{target}: another extract took the lock {lock} just now; try again")
    try:
        yield lock
    finally:
        try:
            holder = json.loads(lock.read_text())
            if holder.get("pid") == me["pid"] and holder.get("pid_start") == me["pid_start"]:
                lock.unlink()
        except (OSError, ValueError):
            pass


def _take_over_stale(lock: Path, host: str, warn: Any) -> None:
    try:
        holder = json.loads(lock.read_text())
        pid, their_host = int(holder["pid"]), str(holder["host"])
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError):
        age = time.time() - lock.stat().st_mtime if lock.exists() else 1e9
        if age < 10:
            raise CacheError(f"{lock}: another extract is starting on this cache; try again") from None
        pid, their_host, holder = -1, host, {}
    if their_host != host:
        raise CacheError(
            f"{lock}: cache is locked by pid {pid} on host {their_host} (since "
            f"{holder.get('started')}); if that job is gone, delete the lock file"
        )
    written = lock.stat().st_mtime if lock.exists() else None
    if pid > 0 and holder_alive(pid, holder.get("pid_start"), written):
        raise CacheError(
            f"{lock}: another extract (pid {pid}, started {holder.get('started')}) is writing "
            "this cache; wait for it or stop it (if no extract is running, delete this lock file)"
        )
    if warn is not None:
        if pid <= 0 or not pid_alive(pid):
            why = "is not running"
        elif pid == os.getpid():
            why = "is this process: the lock is from before a restart"
        else:
            why = "now names another process"
        warn(f"taking over a stale lock {lock} (pid {pid} {why})")
    lock.unlink(missing_ok=True)


class PartialStore:
    """Finished batches of an unfinished extract: ``TARGET.partial/meta.json`` + one ``batch-*.npz`` each.

    Every file is written to a temporary name, fsynced and renamed, so a kill at any moment loses at most
    the batch being written; the final cache is assembled from the shards only when every row is done.
    """

    def __init__(self, target: str | Path, folder: str | Path | None = None) -> None:
        self.target = Path(target)
        self.dir = Path(folder) if folder is not None else partial_folder(self.target)

    def meta(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.dir / "meta.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def start(self, key: str, key_params: dict[str, Any]) -> None:
        self._io(lambda: self.dir.mkdir(parents=True, exist_ok=True))
        blob = json.dumps({"key": key, "key_params": key_params}, sort_keys=True, default=str).encode()
        self._io(lambda: atomic_write(self.dir / "meta.json", lambda fh: fh.write(blob), point="meta-tmp"))

    def write_shard(
        self,
        indices: np.ndarray,
        features: np.ndarray,
        view_params: np.ndarray,
        skipped: list[tuple[int, str]] = (),
        stamps: np.ndarray | None = None,
    ) -> Path:
        """Record one finished batch: features/params of ``indices``, the images skipped in it, and the
        stamps of the files read (int64 ``[n, 4]``, :class:`~fastall.data.fingerprint.Stamp`)."""
        first = min([int(i) for i in indices] + [i for i, _ in skipped])
        path = self.dir / f"batch-{first:09d}.npz"
        arrays = {
            "indices": np.asarray(indices, dtype=np.int64),
            "features": np.asarray(features, dtype=np.float16),
            "view_params": np.asarray(view_params, dtype=np.float32),
            "skipped_index": np.asarray([i for i, _ in skipped], dtype=np.int64),
            "skipped_reason": np.asarray([r for _, r in skipped], dtype=str),
            "stamps": np.zeros((len(indices), 4), np.int64)
            if stamps is None
            else np.asarray(stamps, np.int64),
        }
        self._io(lambda: atomic_write(path, lambda fh: np.savez(fh, **arrays), point="shard-tmp"))
        return path

    def load(self, n: int, views: int, dim: int, warn: Any = None) -> tuple[dict, dict[int, str]]:
        """``({index: (features [V, D], params [V, P])}, {index: reason})`` from every readable shard."""
        done: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        skipped: dict[int, str] = {}
        for tmp in [*self.dir.glob(".*.tmp"), *self.dir.glob(".*.tmp-*")]:
            tmp.unlink(missing_ok=True)
        for shard in sorted(self.dir.glob("batch-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    idx, feats, params = z["indices"], z["features"], z["view_params"]
                    bad_idx, reasons = z["skipped_index"], z["skipped_reason"]
                ok = (
                    feats.shape == (len(idx), views, dim)
                    and params.shape[:2] == (len(idx), views)
                    and all(0 <= int(i) < n for i in [*idx, *bad_idx])
                )
            except (OSError, ValueError, KeyError, EOFError) as err:
                ok, idx = False, str(err)
            if not ok:
                if warn is not None:
                    warn(f"{shard}: unreadable or inconsistent partial batch, recomputing it")
                shard.unlink(missing_ok=True)
                continue
            for row, i in enumerate(idx):
                done.setdefault(int(i), (feats[row], params[row]))
            for i, reason in zip(bad_idx, reasons, strict=True):
                skipped.setdefault(int(i), str(reason))
        return done, skipped

    def stamps(self) -> dict[int, Stamp]:
        """The stamp each finished image was read with (none for shards of an older fastall)."""
        out: dict[int, Stamp] = {}
        for shard in sorted(self.dir.glob("batch-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    if "stamps" not in z.files:
                        continue
                    idx, rows = z["indices"], z["stamps"]
            except (OSError, ValueError, KeyError, EOFError):
                continue
            if rows.shape == (len(idx), 4):
                for i, row in zip(idx, rows, strict=True):
                    out.setdefault(int(i), Stamp.from_ints(row))
        return out

    def drop(self, indices: set[int]) -> None:
        """Forget the finished work of ``indices`` (to recompute them): each shard holding one is rewritten
        without it, under the name of its new first index, or removed when nothing is left."""
        for shard in sorted(self.dir.glob("batch-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    arrays = {name: z[name] for name in z.files}
            except (OSError, ValueError, KeyError, EOFError):
                continue
            keep = np.array([int(i) not in indices for i in arrays["indices"]], dtype=bool)
            keep_bad = np.array([int(i) not in indices for i in arrays["skipped_index"]], dtype=bool)
            if keep.all() and keep_bad.all():
                continue
            for name in ("indices", "features", "view_params", "stamps"):
                if name in arrays:
                    arrays[name] = arrays[name][keep]
            for name in ("skipped_index", "skipped_reason"):
                arrays[name] = arrays[name][keep_bad]
            left = [int(i) for i in (*arrays["indices"], *arrays["skipped_index"])]
            if left:
                path = self.dir / f"batch-{min(left):09d}.npz"
                self._io(
                    lambda a=arrays, p=path: atomic_write(p, lambda fh: np.savez(fh, **a), point="shard-tmp")
                )
                if path != shard:
                    shard.unlink(missing_ok=True)
            else:
                shard.unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _io(self, action: Any) -> None:
        try:
            action()
        except OSError as err:
            full = " (disk full)" if is_disk_full(err) else ""
            raise CacheError(
                f"{self.dir}: cannot save extract progress{full}: {describe_write_error(err, self.dir)}"
            ) from err


_RANK_DIR = re.compile(r"rank-(\d+)-of-(\d+)")


def partial_folder(target: str | Path, scratch: str | Path | None = None) -> Path:
    """Where the unfinished work on ``target`` lives: ``TARGET.partial`` beside it, or a folder in ``scratch``
    (node-local disk) named after the target and a hash of its absolute path."""
    target = Path(target)
    if scratch is None:
        return target.with_name(target.name + ".partial")
    tag = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:8]
    return Path(scratch) / f"{target.name}-{tag}.partial"


def rank_folder(base: Path, rank: int, world: int) -> Path:
    """One rank's shard store: ``base`` itself for a plain run, else ``base/rank-R-of-W``."""
    return base if world == 1 else base / f"rank-{rank}-of-{world}"


def claim_layout(base: Path, world: int, overwrite: bool) -> None:
    """Refuse unfinished work in ``base`` by another number of processes; with ``overwrite`` discard it."""
    if not base.is_dir():
        return
    others: dict[Path, int] = {}
    for entry in base.iterdir():
        m = _RANK_DIR.fullmatch(entry.name)
        if m and int(m[2]) != world:
            others[entry] = int(m[2])
        elif not m and world != 1 and (entry.name == "meta.json" or entry.name.startswith(("batch-", "."))):
            others[entry] = 1
    if not others:
        return
    if not overwrite:
        counts = " and ".join(str(n) for n in sorted(set(others.values())))
        raise CacheError(
            f"{base} holds an unfinished extract by {counts} process(es), this run has {world}: rerun with "
            "the same number (torchrun --nproc_per_node/--nnodes), or use --overwrite to discard it"
        )
    for entry in others:
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
