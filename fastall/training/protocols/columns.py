"""compare's field-protocol columns for one backbone: cosine kNN and the label-efficiency curves, on the
comparison's own folds (the same for every backbone)."""

from __future__ import annotations

import numpy as np
import torch

from fastall.features.cache import FeatureCache
from fastall.training.protocols import knn
from fastall.training.protocols.efficiency import DRAWS, label_efficiency
from fastall.training.protocols.linear import FIXED_C
from fastall.training.splits import Splits

K = 20


def field_columns(cache: FeatureCache, splits: Splits, *, seed: int = 0, draws: int = DRAWS) -> dict:
    """Pooled out-of-fold accuracy of the weighted cosine kNN (k = 20), and for the fixed-C linear probe and
    that kNN the labelled patients per class at which each first reaches 95% of its full-data accuracy."""
    x = torch.from_numpy(np.ascontiguousarray(cache.features[:, 0], dtype=np.float32))
    labels, patients = cache.labels, np.asarray(cache.patients, dtype=object)
    k = len(cache.class_names)
    correct, total, sims = 0, 0, []
    for train, val in splits.folds:
        sims.append(knn.similarities(x, train, val))
        shares = knn.votes(sims[-1], labels[train], k, ks=(K,))[K, "weighted"]
        correct += int((shares.argmax(1) == labels[val]).sum())
        total += val.size
    eff = label_efficiency(
        x, labels, patients, splits.folds, k, c=FIXED_C, ks=(K,), repeats=draws, seed=seed, sims=sims
    )
    curves = eff["curves"]
    return {
        f"knn{K}_oof_accuracy": correct / total if total else float("nan"),
        "linear_reach_95": curves["linear_fixed_c"]["reach_95"],
        f"knn{K}_reach_95": curves[f"knn{K}_weighted"]["reach_95"],
        "label_efficiency": {n: curves[n]["points"] for n in ("linear_fixed_c", f"knn{K}_weighted")},
    }
