"""Synthetic feature caches for tests and benchmarks (written with the real `write_cache`).

Each image's features are a class mean + a per-patient offset + per-image noise + per-view noise, so a head
can learn the classes, folds differ a little, and patient-level leakage would matter. ``loc``/``scale`` move
the features to the scale of a random-init ResNet-50 (mean ~21, std ~20) where an unstandardised head learns
poorly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastall.cache import write_cache

CLASS_NAMES = ["hem", "all"]


def make_feature_cache(path: str | Path, *, patients: tuple[int, int] = (8, 12), images_per_patient: int = 10,
                       views: int = 4, dim: int = 64, separation: float = 1.0, patient_spread: float = 0.5,
                       loc: float = 0.0, scale: float = 1.0, prelim_patients: int = 0,
                       testing_images: int = 0, seed: int = 0, patient_ids: list[str] | None = None,
                       labels: np.ndarray | None = None) -> Path:
    """Write a complete cache. ``patient_ids``/``labels`` (one per image) override the generated layout."""
    rng = np.random.default_rng(seed)
    if patient_ids is None:
        patient_ids, label_list, sources = [], [], []
        for k, n_pat in enumerate(patients):
            for p in range(n_pat):
                n_img = max(2, int(rng.poisson(images_per_patient)))
                patient_ids += [f"{CLASS_NAMES[k][0].upper()}{p}"] * n_img
                label_list += [k] * n_img
                sources += [f"fold_{p % 3}"] * n_img
        for k in range(2):
            for p in range(prelim_patients):
                patient_ids += [f"P{k}{p}"] * images_per_patient
                label_list += [k] * images_per_patient
                sources += ["prelim"] * images_per_patient
        patient_ids += ["unknown"] * testing_images
        label_list += [-1] * testing_images
        sources += ["testing"] * testing_images
        labels = np.asarray(label_list, dtype=np.int64)
    else:
        labels = np.asarray(labels, dtype=np.int64)
        sources = ["fold_0"] * len(labels)
    n = len(labels)
    direction = rng.standard_normal((2, dim)).astype(np.float32)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    uniq, inverse = np.unique(np.asarray(patient_ids, dtype=object), return_inverse=True)
    offsets = rng.standard_normal((len(uniq), dim)).astype(np.float32) * patient_spread
    base = rng.standard_normal((n, dim)).astype(np.float32) + offsets[inverse]
    known = labels >= 0
    base[known] += separation * direction[labels[known]] * np.sqrt(dim) / 4
    feats = base[:, None, :] + 0.3 * rng.standard_normal((n, views, dim)).astype(np.float32)
    feats = loc + scale * feats
    view_params = np.zeros((n, views, 2), dtype=np.float32)
    view_params[:, 1:, 0] = 1.0
    key_params = {"backbone": "synthetic", "weights": "none", "weights_sha256": "0" * 64, "image_size": 32,
                  "views": views, "seed": seed, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                  "dim": dim, "loc": loc, "scale": scale}
    return write_cache(path, features=feats.astype(np.float16), labels=labels, class_names=CLASS_NAMES,
                       patients=[str(p) for p in patient_ids], paths=[f"img/{i:06d}.bmp" for i in range(n)],
                       sources=sources, view_params=view_params, view_param_names=["flip", "angle"],
                       key_params=key_params, provenance={"created": "test"})
