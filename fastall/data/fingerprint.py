"""A dataset's identity: the fingerprint every cache records (``dataset_fingerprint``), so that a run's
images can be recognised again wherever they have moved."""

from __future__ import annotations

import hashlib
import json
import os

from fastall.data.discover import Record


def dataset_fingerprint(records: list[Record]) -> str:
    """sha256 over (relative path, label, patient, source, file size) of every record, in discovery order."""
    h = hashlib.sha256()
    for r in records:
        try:
            size = os.stat(r.path).st_size
        except OSError:
            size = -1
        h.update(json.dumps([r.rel_path, r.label, r.patient, r.source, size]).encode())
    return h.hexdigest()
