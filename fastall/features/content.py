"""Has an image changed since its features were computed? `extract`'s content checks.

Every cached or finished image carries the stamp of the bytes it was decoded from (content hash, size,
mtime_ns). A file whose size and mtime are unchanged is taken as unchanged (a ``stat``, no read); otherwise,
or for every file with ``--verify-content``, its bytes are hashed and compared. A changed file is refused
(the default: features that runs were trained on are never replaced silently), naming how many and the
first paths; ``--update`` recomputes just those images and keeps the rest.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from fastall.data.duplicates import duplicate_groups, duplicate_warning
from fastall.data.fingerprint import Stamp, hash_file
from fastall.data.records import Record
from fastall.errors import CacheError
from fastall.features.cache import FeatureCache, read_cache
from fastall.features.shards import PartialStore

RUN_ONLY = ("content_fingerprint",)  # key parameters known only once the run is done
SEED_ROWS = 1024


def run_params(key_params: dict[str, Any]) -> dict[str, Any]:
    """The key parameters a run is started with (without those known only at the end)."""
    return {k: v for k, v in key_params.items() if k not in RUN_ONLY}


def changed_files(
    records: list[Record], recorded: dict[int, Stamp], *, verify: bool
) -> tuple[list[int], int]:
    """``(indices of changed files, files touched but unchanged)`` among ``recorded`` {record index: stamp}.

    Size and mtime unchanged: unchanged, without reading (unless ``verify``); else the content hash decides.
    """
    changed, touched = [], 0
    for i in sorted(recorded):
        stamp = recorded[i]
        try:
            st = os.stat(records[i].path)
        except OSError:
            changed.append(i)
            continue
        if st.st_size != stamp.size:
            changed.append(i)
            continue
        if not verify and st.st_mtime_ns == stamp.mtime_ns:
            continue
        try:
            same = hash_file(records[i].path) == stamp.hash
        except OSError:
            same = False
        if same:
            touched += st.st_mtime_ns != stamp.mtime_ns
        else:
            changed.append(i)
    return changed, touched


def _refuse(where: Any, records: list[Record], changed: list[int], what: str) -> CacheError:
    first = ", ".join(records[i].rel_path for i in changed[:3])
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    return CacheError(
        f"{where}: {len(changed)} image(s) changed since they were {what} (same name and size, other "
        f"content): {first}{more}; `--update` recomputes them and keeps the rest, `--overwrite` recomputes "
        "everything"
    )


def _touched_warning(touched: int, warn: Callable[[str], None]) -> None:
    if touched:
        warn(f"{touched} image file(s) have a new mtime but the same content (checked by hash)")


def check_cache(
    out: Any, cache: FeatureCache, records: list[Record], *, verify: bool, update: bool, warn: Callable
) -> list[int]:
    """Record indices of the complete cache's images whose file changed; refused unless ``update``."""
    if cache.content_hashes is None:
        warn(
            f"{out} records no content hashes (made by an older fastall): only names and sizes were "
            "checked; `--overwrite` rebuilds it with hashes"
        )
        return []
    index = {r.rel_path: i for i, r in enumerate(records)}
    recorded = {
        index[str(p)]: Stamp(str(h), int(s), int(m))
        for p, h, s, m in zip(
            cache.paths, cache.content_hashes, cache.file_sizes, cache.file_mtimes, strict=True
        )
        if str(p) in index
    }
    changed, touched = changed_files(records, recorded, verify=verify)
    _touched_warning(touched, warn)
    if changed and not update:
        raise _refuse(out, records, changed, "cached")
    return changed


def check_partial(
    store: PartialStore,
    records: list[Record],
    done: Iterable[int],
    *,
    verify: bool,
    update: bool,
    warn: Callable,
) -> bool:
    """Check the finished images of unfinished work before resuming; with ``update`` forget the changed
    ones (they are recomputed), else refuse them. True when work was forgotten."""
    stamps = store.stamps()
    recorded = {i: stamps[i] for i in done if i in stamps and stamps[i].hash}
    changed, touched = changed_files(records, recorded, verify=verify)
    _touched_warning(touched, warn)
    if not changed:
        return False
    if not update:
        raise _refuse(store.dir, records, changed, "extracted (unfinished work, before this resume)")
    store.drop(set(changed))
    warn(f"recomputing {len(changed)} changed image(s) of the unfinished work in {store.dir}")
    return True


def seed_update(
    store: PartialStore, out: Any, records: list[Record], changed: list[int], warn: Callable
) -> None:
    """Start ``--update`` of a complete cache: its unchanged rows become finished work of the partial store
    (same image, same index: the same features a fresh run computes), the changed images are left to do."""
    old = read_cache(out)
    index = {r.rel_path: i for i, r in enumerate(records)}
    stale = set(changed)
    rows = [
        k for k, p in enumerate(old.paths) if index.get(str(p)) is not None and index[str(p)] not in stale
    ]
    for start in range(0, len(rows), SEED_ROWS):
        part = rows[start : start + SEED_ROWS]
        stamps = np.array(
            [
                Stamp(str(old.content_hashes[k]), int(old.file_sizes[k]), int(old.file_mtimes[k])).as_ints()
                for k in part
            ],
            dtype=np.int64,
        )
        indices = np.array([index[str(old.paths[k])] for k in part], dtype=np.int64)
        store.write_shard(indices, old.features[part], old.view_params[part], stamps=stamps)
    skipped = [(index[p], reason) for p, reason in old.skipped if p in index and index[p] not in stale]
    if skipped:
        store.write_shard(
            np.empty(0, np.int64),
            np.empty((0, *old.features.shape[1:]), np.float16),
            np.empty((0, *old.view_params.shape[1:]), np.float32),
            skipped,
            stamps=np.empty((0, 4), np.int64),
        )
    warn(f"--update: {len(changed)} changed image(s) of {out} are recomputed, {len(rows)} kept")


def row_stamps(stamps: dict[int, Stamp], records: list[Record], rows: list[int]) -> list[Stamp]:
    """The stamp of every finished row; one missing (work of an older fastall) is taken from the file now."""
    out = []
    for i in rows:
        stamp = stamps.get(i)
        if stamp is None or not stamp.hash:
            st = os.stat(records[i].path)
            stamp = Stamp(hash_file(records[i].path), int(st.st_size), int(st.st_mtime_ns))
        out.append(stamp)
    return out


LARGE_VIEWS = 32


def views_warning(views: int, images: int, warn: Callable[[str], None]) -> None:
    """Say what a large --views costs before the work starts: cache size and forwards, against 8 views."""
    if views <= LARGE_VIEWS:
        return
    size = images * views * 2048 * 2 / 2**30
    warn(
        f"--views {views}: {images} images x {views} views = {images * views:,} backbone forwards (about "
        f"{views / 8:,.0f}x the time of the default 8 views) and a cache of about {size:,.1f} GiB"
    )


def duplicate_warnings(cache: FeatureCache) -> list[str]:
    """Byte-identical images across classes or patients in a cache with content hashes."""
    if cache.content_hashes is None:
        return []
    groups = duplicate_groups(cache.content_hashes, cache.labels, cache.patients)
    message = duplicate_warning(groups, cache.paths)
    return [message] if message else []
