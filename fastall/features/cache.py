"""The HDF5 feature-cache schema: one atomic writer, one validating reader.

Layout (plain h5py / h5dump can read it)::

    features     float16 [N, V, D]  chunked (1, V, D): pooled backbone features of V views per image
    labels       int64   [N]        class index into class_names (-1: unlabelled)
    class_names  str     [K]
    patient      str     [N]        patient ID (the grouping unit of every split)
    path         str     [N]        image path relative to the data root
    source       str     [N]        fold_0 | fold_1 | fold_2 | prelim | testing | <folder>
    view_params  float32 [N, V, P]  augmentation parameters of each view (view 0: identity), columns named by
                                    the view_param_names attribute (fastall.viewparams; a cache
                                    without the fill columns reads as black fill)
    done         bool    [N]        all true in a complete cache
    skipped      str     [S, 2]     (path, reason) of images left out with --skip-bad
    content_hash str     [N]        hash of each image file's bytes as decoded (absent in older caches)
    file_size    int64   [N]        its size in bytes      } the cheap first check of whether a file
    file_mtime_ns int64  [N]        its mtime in ns        } changed since (absent in older caches)
    maps         float16 [N, M, C, H, W]  chunked (1, 1, C, H, W): with `extract --maps LAYER`, the map at
                                    the cut of the first M views (``maps``, ``map_views``, ``map_shape``
                                    in key_params; validated and streamed by :mod:`fastall.features.maps`)

Attributes: schema_version, key, key_params (JSON of every parameter that changes the features, with
``content_fingerprint``: sha256 over every row's path, label, patient, source and content hash), provenance
(fastall/torch/torchvision versions, device, created, data_root, precision), view_param_names,
content_hash_algorithm. An int8 cache (``amp_dtype`` int8, with the ``quantization`` key parameter) also holds
``int8_quality`` (JSON: per-image cosine to fp32, median and 1st percentile, and the logistic probe's held-out
accuracy on fp32 and int8 features, with the thresholds and ``passed``) and ``int8_calibration`` (JSON: the
relative paths of the calibration images, in sampled order; the first ``observer_images`` set the scales).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np

from fastall.data.fingerprint import ALGORITHM, Stamp
from fastall.errors import CacheError
from fastall.features import cache_checks
from fastall.features.maprows import MapRows, write_maps
from fastall.system.files import atomic_write, check_free_space, describe_write_error, file_kind
from fastall.system.formats import FileFormat
from fastall.viewparams import upgrade_view_params

SCHEMA_VERSION = 1
REQUIRED = ("features", "labels", "class_names", "patient", "path", "source", "view_params", "done")
CACHE_FILE = FileFormat(
    "cache", None, SCHEMA_VERSION, REQUIRED, "re-run `fastall extract --overwrite`", "schema_version"
)
_STR = h5py.string_dtype("utf-8")


def cache_key(key_params: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of every parameter that changes the features."""
    blob = json.dumps(key_params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def diff_params(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Names of the parameters that differ, as ``name: old -> new``."""
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name, "<absent>"), new.get(name, "<absent>")
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            out.append(f"{name}: {_short(a)} -> {_short(b)}")
    return out


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class FeatureCache:
    """A validated cache, arrays in memory (features are read once, as stored: float16)."""

    path: Path
    features: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    patients: np.ndarray
    paths: np.ndarray
    sources: np.ndarray
    view_params: np.ndarray
    view_param_names: list[str]
    attrs: dict[str, Any]
    key_params: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    content_hashes: np.ndarray | None = None
    file_sizes: np.ndarray | None = None
    file_mtimes: np.ndarray | None = None

    @property
    def key(self) -> str:
        return str(self.attrs["key"])

    @property
    def fill(self) -> str:
        """The ``--fill`` of the extraction (``black`` for a cache made before the option)."""
        return str(self.key_params.get("fill", "black"))

    @property
    def n_images(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_views(self) -> int:
        return int(self.view_params.shape[1])

    @property
    def dim(self) -> int:
        if self.features.ndim == 3 and self.features.shape[0]:
            return int(self.features.shape[2])
        return int(self.attrs.get("feature_dim", 0))

    @property
    def backbone(self) -> str:
        """The backbone the features come from (caches written before there was a choice: resnet50)."""
        return str(self.key_params.get("backbone") or "resnet50")

    @property
    def encoder(self) -> str:
        """The backbone with its recorded stages or token pooling, e.g. ``resnet50[layer3]``,
        ``dinov2-s[cls+mean]`` (plain: the backbone's name)."""
        detail = "+".join(self.key_params.get("layers") or []) or self.key_params.get("pool")
        return f"{self.backbone}[{detail}]" if detail else self.backbone

    @property
    def groups(self) -> np.ndarray:
        """int64 ``[N]`` patient group codes (indices into the sorted distinct patients)."""
        return np.unique(self.patients.astype(str), return_inverse=True)[1].astype(np.int64).reshape(-1)

    def as_torch(self) -> tuple[Any, Any, Any]:
        """``(features [N, V, D] float16, labels [N], groups [N])``: torch tensors sharing memory."""
        import torch

        return (torch.from_numpy(self.features), torch.from_numpy(self.labels), torch.from_numpy(self.groups))


@dataclass(frozen=True)
class ImageRows:
    """The per-image columns of a cache, one entry per row: the label (index into the class names), the
    patient, the path (relative to the data root), the source (fold, prelim, ...) and, where known, the
    content stamp of the file the features were computed from."""

    labels: np.ndarray
    patients: list[str]
    paths: list[str]
    sources: list[str]
    stamps: list[Stamp] | None = None

    @classmethod
    def of(cls, cache: FeatureCache, stamps: list[Stamp] | None = None) -> ImageRows:
        """The rows of a cache read back (``stamps`` are not read back: give them to keep them)."""
        return cls(cache.labels, list(cache.patients), list(cache.paths), list(cache.sources), stamps)


def write_cache(
    path: str | Path,
    *,
    features: np.ndarray,
    rows: ImageRows,
    class_names: list[str],
    view_params: np.ndarray,
    view_param_names: list[str],
    key_params: dict[str, Any],
    provenance: dict[str, Any],
    skipped: list[tuple[str, str]] = (),
    maps: MapRows | None = None,
) -> Path:
    """Write a complete cache atomically (:func:`~fastall.system.files.atomic_write`), after checking that the
    disk has room for it; a full disk is a one-line CacheError, and leaves no temporary file.

    With ``rows.stamps`` (one per row) the files' content hashes, sizes and mtimes are stored, and
    ``content_fingerprint`` (over every row) joins the key parameters. ``maps``: the activation maps at the
    cut, row by row (their size counts in the free-space check)."""
    path = Path(path)
    labels, patients, paths, sources, stamps = (
        rows.labels,
        rows.patients,
        rows.paths,
        rows.sources,
        rows.stamps,
    )
    n = len(labels)
    if features.shape[0] != n or view_params.shape[:2] != features.shape[:2]:
        raise CacheError(f"{path}: inconsistent shapes {features.shape} / {view_params.shape} / {n} labels")
    key_params = {
        k: v for k, v in key_params.items() if k != "content_fingerprint"
    }  # this file's rows decide
    if stamps is not None:
        hashes = [s.hash for s in stamps]
        key_params = {
            **key_params,
            "content_fingerprint": cache_checks.rows_fingerprint(paths, labels, patients, sources, hashes),
        }
    needed = expected_cache_bytes(features.shape, view_params.shape, [*patients, *paths, *sources])
    if maps is not None:
        if tuple(maps.shape[:1]) != (n,) or len(maps.shape) != 5:
            raise CacheError(f"{path}: maps of shape {tuple(maps.shape)} do not fit {n} rows")
        needed += int(np.prod(maps.shape)) * 2 + 64 * int(np.prod(maps.shape[:2]))

    def write(fh: BinaryIO) -> None:
        with h5py.File(fh, "w", locking=False) as f:  # private until renamed; NFS may lack locks (errno 37)
            f.create_dataset(
                "features",
                data=features.astype(np.float16, copy=False),
                chunks=(1, *features.shape[1:]) if n else None,
            )
            f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
            f.create_dataset("class_names", data=list(class_names), dtype=_STR)
            f.create_dataset("patient", data=list(patients), dtype=_STR)
            f.create_dataset("path", data=list(paths), dtype=_STR)
            f.create_dataset("source", data=list(sources), dtype=_STR)
            f.create_dataset("view_params", data=np.asarray(view_params, dtype=np.float32))
            f.create_dataset("done", data=np.ones(n, dtype=bool))
            f.create_dataset(
                "skipped",
                data=[list(s) for s in skipped] or np.empty((0, 2), dtype=object),
                dtype=_STR,
                shape=(len(skipped), 2),
            )
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["key"] = cache_key(key_params)
            f.attrs["key_params"] = json.dumps(key_params, sort_keys=True, default=str)
            f.attrs["view_param_names"] = json.dumps(list(view_param_names))
            f.attrs["feature_dim"] = int(features.shape[2])
            if stamps is not None:
                f.create_dataset("content_hash", data=hashes, dtype=_STR)
                f.create_dataset("file_size", data=np.array([s.size for s in stamps], dtype=np.int64))
                f.create_dataset("file_mtime_ns", data=np.array([s.mtime_ns for s in stamps], dtype=np.int64))
                f.attrs["content_hash_algorithm"] = ALGORITHM
            for name, value in {**key_params, **provenance}.items():
                f.attrs[name] = _attr(value)
            if maps is not None:
                write_maps(f, maps)

    try:
        check_free_space(path.parent, needed)
        atomic_write(path, write, point="cache-tmp")
    except OSError as err:
        partial = path.with_name(path.name + ".partial")
        kept = (
            f"; the finished work in {partial} is kept: run extract again to resume"
            if partial.exists()
            else ""
        )
        raise CacheError(
            f"{path}: cannot write cache: {describe_write_error(err, path.parent)}{kept}"
        ) from err
    return path


def expected_cache_bytes(
    features_shape: tuple[int, ...], view_params_shape: tuple[int, ...], strings: list[str]
) -> int:
    """About how many bytes a cache takes: float16 features, float32 view parameters, the string tables, and
    HDF5's bookkeeping (a chunk index entry per image, headers)."""
    n = features_shape[0] if features_shape else 0
    features = 2 * int(np.prod(features_shape))
    params = 4 * int(np.prod(view_params_shape))
    text = sum(len(s.encode()) + 16 for s in strings)
    return features + params + text + 128 * n + (64 << 10)


def _attr(value: Any) -> Any:
    if isinstance(value, str):
        return str(value)  # str subclasses such as torch.__version__ are not HDF5-storable as such
    return value if isinstance(value, (int, float, bool)) else json.dumps(value, default=str)


def read_cache(
    path: str | Path, *, load_features: bool = True, expect: dict[str, Any] | None = None
) -> FeatureCache:
    """Open and validate a cache: schema version, datasets, shapes, dtypes, completeness and key.

    ``expect`` (key parameters such as ``{"backbone": "resnet50", "image_size": 224}``) refuses a cache made
    with other values, naming each differing parameter.
    """
    cache = _open_cache(Path(path), load_features)
    if expect:
        diffs = diff_params({k: cache.key_params.get(k, "<absent>") for k in expect}, dict(expect))
        if diffs:
            raise CacheError(
                f"{cache.path}: cache made with other settings (cache -> expected): " + "; ".join(diffs)
            )
    return cache


def _open_cache(path: Path, load_features: bool) -> FeatureCache:
    kind = file_kind(path)
    if kind is not None and kind != "no such file":
        raise CacheError(f"{path}: is {kind}, not a cache file")
    if not path.is_file():
        partial = path.with_name(path.name + ".partial")
        hint = (
            " (an interrupted extract left work in progress: run extract again to resume)"
            if partial.exists()
            else ""
        )
        raise CacheError(f"{path}: no such cache file{hint}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise CacheError(f"{path}: not a readable HDF5 cache (truncated or corrupt?): {err}") from err
    try:
        with f:
            return _read(path, f, load_features)
    except CacheError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise CacheError(f"{path}: corrupt cache: {err}") from err


def _read(path: Path, f: h5py.File, load_features: bool) -> FeatureCache:
    cache_checks.check_links(path, f)
    attrs = cache_checks.read_attrs(path, f)
    version = attrs.get("schema_version")
    CACHE_FILE.check(path, None, None if version is None else int(version), f, error=CacheError)
    feats = f["features"]
    n = f["labels"].shape[0]
    if feats.ndim != 3 or feats.shape[0] != n or f["view_params"].shape[:2] != feats.shape[:2]:
        raise CacheError(
            f"{path}: inconsistent shapes: features {feats.shape}, labels ({n},), "
            f"view_params {f['view_params'].shape}"
        )
    if feats.dtype not in (np.float16, np.float32) or f["labels"].dtype.kind not in "iu":
        raise CacheError(f"{path}: unexpected dtypes: features {feats.dtype}, labels {f['labels'].dtype}")
    for name in ("patient", "path", "source"):
        if f[name].shape != (n,):
            raise CacheError(f"{path}: dataset {name!r} has shape {f[name].shape}, expected ({n},)")
    key_params = json.loads(attrs["key_params"])
    cache_checks.check_dims(path, f, attrs, key_params)
    if not bool(np.all(f["done"][()])):
        raise CacheError(f"{path}: cache is incomplete ({int(np.sum(~f['done'][()]))} rows not done)")
    if cache_key(key_params) != attrs["key"]:
        raise CacheError(f"{path}: cache key does not match its recorded parameters (file was altered)")
    labels = f["labels"][()].astype(np.int64)
    class_names = list(f["class_names"].asstr()[()])
    if labels.size and (labels.max() >= len(class_names) or labels.min() < -1):
        raise CacheError(f"{path}: labels out of range for {len(class_names)} classes")
    paths = np.asarray(f["path"].asstr()[()], dtype=object)
    cache_checks.check_paths(path, paths)
    patients = np.asarray(f["patient"].asstr()[()], dtype=object)
    sources = np.asarray(f["source"].asstr()[()], dtype=object)
    stamps = _stamps(path, f, n)
    if "content_fingerprint" in key_params:
        hashes = stamps[0] if stamps else [""] * n
        fingerprint = cache_checks.rows_fingerprint(paths, labels, patients, sources, hashes)
        if fingerprint != key_params["content_fingerprint"]:
            raise CacheError(
                f"{path}: the rows (paths, labels, patients, sources, content hashes) do not match the "
                "recorded content_fingerprint (file was altered)"
            )
    skipped = [tuple(row) for row in f["skipped"].asstr()[()]] if "skipped" in f else []
    features = feats[()] if load_features else np.empty((0, 0, 0), dtype=np.float16)
    if load_features:
        cache_checks.check_finite(path, features, paths)
    view_params, names = upgrade_view_params(f["view_params"][()], json.loads(attrs["view_param_names"]))
    return FeatureCache(
        path=path,
        features=features,
        labels=labels,
        class_names=class_names,
        patients=patients,
        paths=paths,
        sources=sources,
        view_params=view_params,
        view_param_names=names,
        attrs=attrs,
        key_params=key_params,
        skipped=skipped,
        **dict(zip(("content_hashes", "file_sizes", "file_mtimes"), stamps or (None,) * 3, strict=True)),
    )


def _stamps(path: Path, f: h5py.File, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(content_hash, file_size, file_mtime_ns)`` of every row, or None for a cache without them."""
    names = ("content_hash", "file_size", "file_mtime_ns")
    if not all(name in f for name in names):
        return None
    for name in names:
        if f[name].shape != (n,):
            raise CacheError(f"{path}: dataset {name!r} has shape {f[name].shape}, expected ({n},)")
    hashes = np.asarray(f["content_hash"].asstr()[()], dtype=object)
    return hashes, f["file_size"][()].astype(np.int64), f["file_mtime_ns"][()].astype(np.int64)
