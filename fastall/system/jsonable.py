"""One conversion to plain data, for JSON files and ``torch.load(weights_only=True)`` blobs alike."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def plain(value: Any) -> Any:
    """Only dict (str keys), list, str, int, float, bool and None, recursively: numpy scalars and arrays
    become Python values and lists, tuples lists, paths and anything else their ``str``; a NaN or infinite
    float becomes None (``null``), so ``json.dumps(plain(x), allow_nan=False)`` always works."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return str(value)  # str subclasses (torch's TorchVersion) as plain str
    if value is None or isinstance(value, (int, bool)):
        return value
    return str(value)
