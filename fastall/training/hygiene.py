"""The cache's rows before training: empty classes refused, look-alike patients and duplicate content
reported, and ``--dedupe`` keeping one copy of byte-identical images."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fastall.data.duplicates import dedupe_rows, duplicate_groups, duplicate_warning, lookalike_warning
from fastall.errors import FastallError
from fastall.features.cache import FeatureCache


def subset(cache: FeatureCache, rows: list[int] | np.ndarray) -> FeatureCache:
    """The cache restricted to ``rows`` (same key: the rows left out are simply not used)."""
    rows = np.asarray(rows, dtype=np.int64)
    per_row = ("features", "labels", "patients", "paths", "sources", "view_params")
    optional = ("content_hashes", "file_sizes", "file_mtimes")
    changes = {name: getattr(cache, name)[rows] for name in per_row}
    changes.update({n: getattr(cache, n)[rows] for n in optional if getattr(cache, n) is not None})
    return replace(cache, **changes)


def check_rows(cache: FeatureCache, *, dedupe: bool = False) -> tuple[FeatureCache, list[str]]:
    """``(the rows to train on, notes for the user)``; a class without images is refused."""
    notes: list[str] = []
    labelled = cache.labels >= 0
    if labelled.any():
        empty = [name for k, name in enumerate(cache.class_names) if not (cache.labels == k).any()]
        if empty:
            raise FastallError(
                f"{cache.path}: class(es) {', '.join(map(repr, empty))} of {cache.class_names} have no "
                "images in the cache: the head would have an output that never saw an example "
                "(re-extract without that class folder)"
            )
        lookalike = lookalike_warning(sorted(set(cache.patients[labelled].astype(str))))
        if lookalike:
            notes.append(lookalike)
    if cache.content_hashes is None:
        if dedupe:
            raise FastallError(
                f"{cache.path}: --dedupe needs the content hashes that newer caches record; "
                "re-extract it with `fastall extract --overwrite`"
            )
        return cache, notes
    groups = duplicate_groups(cache.content_hashes, cache.labels, cache.patients)
    if not dedupe:
        warning = duplicate_warning(groups, cache.paths)
        return cache, notes + ([warning] if warning else [])
    keep, dropped, conflicting = dedupe_rows(groups, cache.labels, cache.n_images)
    if dropped or conflicting:
        notes.append(
            f"--dedupe: kept one copy of each byte-identical image, dropped {dropped} duplicate(s)"
            + (
                f" and all {conflicting} rows of images whose copies carry different labels"
                if conflicting
                else ""
            )
        )
    return subset(cache, keep), notes


def content_leak_notes(audit: list[dict]) -> list[str]:
    """Warnings for folds where validation or test images have byte-identical copies in training."""
    out = []
    for row in audit:
        val, test = row.get("identical_content_val", 0), row.get("identical_content_test", 0)
        if val or test:
            out.append(
                f"fold {row['fold']}: {val} validation and {test} test image(s) have byte-identical copies "
                "in training (other names or patients): scores are optimistic; use --dedupe"
            )
    return out
