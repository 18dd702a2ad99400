"""Synthetic feature caches for tests and benchmarks (written with the real `write_cache`).

Each image's features are a class mean + a per-patient offset + per-image noise + per-view noise, so a head
can learn the classes, folds differ a little, and patient-level leakage would matter. ``loc``/``scale`` move
the features to the scale of a random-init ResNet-50 (mean ~21, std ~20) where an unstandardised head learns
poorly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastall.features.cache import ImageRows, write_cache

CLASS_NAMES = ["hem", "all"]


def make_feature_cache(
    path: str | Path,
    *,
    patients: tuple[int, int] = (8, 12),
    images_per_patient: int = 10,
    views: int = 4,
    dim: int = 64,
    separation: float = 1.0,
    patient_spread: float = 0.5,
    loc: float = 0.0,
    scale: float = 1.0,
    prelim_patients: int = 0,
    testing_images: int = 0,
    seed: int = 0,
    patient_ids: list[str] | None = None,
    labels: np.ndarray | None = None,
) -> Path:
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
    feats = np.empty((n, views, dim), dtype=np.float16)
    for start in range(0, n, 1024):
        noise = rng.standard_normal((min(1024, n - start), views, dim), dtype=np.float32)
        feats[start : start + 1024] = loc + scale * (base[start : start + 1024, None, :] + 0.3 * noise)
    view_params = np.zeros((n, views, 2), dtype=np.float32)
    view_params[:, 1:, 0] = 1.0
    key_params = {
        "backbone": "synthetic",
        "weights": "none",
        "weights_sha256": "0" * 64,
        "image_size": 32,
        "views": views,
        "seed": seed,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "dim": dim,
        "loc": loc,
        "scale": scale,
    }
    return write_cache(
        path,
        features=feats,
        rows=ImageRows(
            labels=labels,
            patients=[str(p) for p in patient_ids],
            paths=[f"img/{i:06d}.bmp" for i in range(n)],
            sources=sources,
        ),
        class_names=CLASS_NAMES,
        view_params=view_params,
        view_param_names=["flip", "angle"],
        key_params=key_params,
        provenance={"created": "test"},
    )


def manifest_layout(manifest: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """(patient per image, label per image) of the real C-NMC 2019 training set: from the manifest when it is
    there, else the same counts (47 ALL patients / 7,272 images, 26 normal / 3,389) generated."""
    from fastall.data.discover import parse_cnmc_name

    path = (
        Path(manifest)
        if manifest
        else Path(__file__).resolve().parents[1].parent / "shared/data/cnmc2019_training_manifest.txt"
    )
    if path.is_file():
        parsed = [
            parse_cnmc_name(line.strip().rsplit("/", 1)[-1])
            for line in path.read_text().splitlines()
            if line.strip()
        ]
        return [p for p, _ in parsed], np.array([1 if c == "all" else 0 for _, c in parsed], dtype=np.int64)
    rng = np.random.default_rng(0)
    patients: list[str] = []
    labels: list[int] = []
    for label, n_pat, n_img, prefix in ((1, 47, 7272, ""), (0, 26, 3389, "H")):
        counts = rng.multinomial(n_img - 20 * n_pat, np.ones(n_pat) / n_pat) + 20
        for p, c in enumerate(counts):
            patients += [f"{prefix}{p + 1}"] * int(c)
            labels += [label] * int(c)
    return patients, np.array(labels, dtype=np.int64)


def real_size_cache(path: str | Path, *, views: int = 8, dim: int = 2048) -> Path:
    """A 10,661-image cache with the real patients and labels (reused when it is already there)."""
    from fastall.errors import CacheError
    from fastall.features.cache import read_cache

    path = Path(path)
    try:
        c = read_cache(path, load_features=False)
        if c.n_images == 10661 and c.n_views == views and c.dim == dim:
            return path
    except CacheError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    patients, labels = manifest_layout()
    return make_feature_cache(
        path, patient_ids=patients, labels=labels, views=views, dim=dim, separation=0.15
    )
