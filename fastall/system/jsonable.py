"""Plain data for JSON files and ``torch.load(weights_only=True)``: the one converter."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def plain(value: Any) -> Any:
    """Only dict/list/str/int/float/bool/None, recursively: NaN/inf -> None, numpy scalars -> Python,
    tuples -> lists, anything else -> ``str`` (so ``json.dumps(..., allow_nan=False)`` always works)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    return str(value)
