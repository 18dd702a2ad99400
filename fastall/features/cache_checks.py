"""What :func:`~fastall.features.cache.read_cache` refuses before trusting a cache's structure.

A cache is data from disk, possibly from someone else: links and external storage that would make HDF5 read
other files, attributes too large to load, paths that leave the data root, features that disagree with the
recorded dimensions or hold NaN/Inf, and rows that do not match the recorded fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath
from typing import Any

import h5py
import numpy as np

from fastall.errors import CacheError

MAX_ATTR_BYTES = 1 << 20
FINITE_CHUNK_ROWS = 1024


def check_links(path: Any, f: h5py.File) -> None:
    """Refuse soft and external links, external raw storage and virtual datasets: every byte a cache gives
    must come from the cache file itself (an external link once made a reader open /usr/bin/bash)."""
    for name in f:
        link = f.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            target = getattr(link, "filename", None) or getattr(link, "path", "")
            kind = {"ExternalLink": "an external link", "SoftLink": "a soft link"}.get(
                type(link).__name__, "a link"
            )
            raise CacheError(
                f"{path}: {name!r} is {kind} to {target!r}: a fastall cache holds its data itself (refused: "
                "links can make HDF5 read other files)"
            )
        obj = f[name]
        if isinstance(obj, h5py.Dataset):
            if obj.external:
                raise CacheError(
                    f"{path}: dataset {name!r} keeps its data in external file {obj.external[0][0]!r} "
                    "(refused: a fastall cache holds its data itself)"
                )
            if obj.is_virtual:
                raise CacheError(
                    f"{path}: dataset {name!r} is a virtual dataset mapping other files "
                    "(refused: a fastall cache holds its data itself)"
                )


def read_attrs(path: Any, f: h5py.File) -> dict[str, Any]:
    """Every attribute, refusing one over 1 MiB (by its stored size before it is read; a variable-length
    string, whose size HDF5 does not tell, by its length once read)."""
    out: dict[str, Any] = {}
    for name in f.attrs:
        aid = h5py.h5a.open(f.id, name.encode())
        if aid.get_storage_size() > MAX_ATTR_BYTES:
            _too_big(path, name, aid.get_storage_size())
        value = f.attrs[name]
        if _text_bytes(value) > MAX_ATTR_BYTES:
            _too_big(path, name, _text_bytes(value))
        out[name] = value.item() if isinstance(value, np.generic) else value
    return out


def _text_bytes(value: Any) -> int:
    """Characters of a variable-length string attribute (a string or an array of them); 0 otherwise."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, np.ndarray) and value.dtype == object:
        return sum(len(v) for v in value.ravel() if isinstance(v, (str, bytes)))
    return 0


def _too_big(path: Any, name: str, size: int) -> None:
    raise CacheError(
        f"{path}: attribute {name!r} is {size / 2**20:,.1f} MiB, over fastall's limit of "
        f"{MAX_ATTR_BYTES >> 20} MiB for one attribute (not a cache fastall wrote)"
    )


def check_dims(path: Any, f: h5py.File, attrs: dict[str, Any], key_params: dict[str, Any]) -> None:
    """The stored shapes must agree with the recorded feature_dim, views and view parameter names."""
    feats, params, n = f["features"], f["view_params"], f["labels"].shape[0]
    if f["done"].shape != (n,):
        raise CacheError(f"{path}: dataset 'done' has shape {f['done'].shape}, expected ({n},)")
    recorded = {"feature_dim": attrs.get("feature_dim"), "key feature_dim": key_params.get("feature_dim")}
    for what, value in recorded.items():
        if value is not None and int(value) != feats.shape[2]:
            raise CacheError(
                f"{path}: features are {feats.shape[2]}-dimensional but the {what} attribute says {value}"
            )
    views = key_params.get("views")
    if views is not None and int(views) != feats.shape[1]:
        raise CacheError(f"{path}: features hold {feats.shape[1]} views but the key says views={views}")
    names = json.loads(attrs.get("view_param_names", "[]"))
    if params.ndim != 3 or (names and params.shape[2] != len(names)):
        raise CacheError(
            f"{path}: view_params of shape {params.shape} do not match {len(names)} view parameter names"
        )


def check_paths(path: Any, paths: np.ndarray) -> None:
    """Every ``path`` entry must be relative and stay inside the data root (no ``..``, no ``/etc/passwd``)."""
    for rel in paths:
        parts = PurePosixPath(str(rel)).parts
        if not str(rel) or "\0" in str(rel) or PurePosixPath(str(rel)).is_absolute() or ".." in parts:
            raise CacheError(
                f"{path}: image path {str(rel)!r} leaves the data root (cache paths are relative, without "
                "'..'): refused"
            )


def rows_fingerprint(paths: Any, labels: Any, patients: Any, sources: Any, hashes: Any) -> str:
    """sha256 over every row's path, label, patient, source and content hash (the cache's
    ``content_fingerprint``): the row tables and the key stand or fall together."""
    h = hashlib.sha256()
    for row in zip(paths, labels, patients, sources, hashes, strict=True):
        h.update(json.dumps([str(row[0]), int(row[1]), str(row[2]), str(row[3]), str(row[4])]).encode())
    return h.hexdigest()


def check_finite(path: Any, features: np.ndarray, paths: np.ndarray) -> None:
    """Refuse NaN/Inf features, a chunk of rows at a time (two reductions per chunk, no copy)."""
    bad: list[int] = []
    for start in range(0, features.shape[0], FINITE_CHUNK_ROWS):
        chunk = features[start : start + FINITE_CHUNK_ROWS]
        if chunk.size and not (np.isfinite(chunk.max()) and np.isfinite(chunk.min())):
            rows = ~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
            bad += [start + int(i) for i in np.flatnonzero(rows)]
    if bad:
        raise CacheError(
            f"{path}: {len(bad)} of {features.shape[0]} images have non-finite features (NaN/Inf), first "
            f"{paths[bad[0]]}: the cache is unusable; re-extract it (with sane weights) using --overwrite"
        )
