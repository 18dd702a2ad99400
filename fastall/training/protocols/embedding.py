"""The 2-D embedding map of view 0: UMAP (``umap-learn``, the ``umap`` extra) when installed, sklearn's
t-SNE otherwise, after standardising and a PCA to at most 50 dimensions. The method used is
returned with the map."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

PCA_DIMS = 50


def embedding_method() -> str:
    return "umap" if importlib.util.find_spec("umap") is not None else "tsne"


def embed_2d(features: np.ndarray, *, seed: int = 0, method: str | None = None) -> tuple[np.ndarray, str]:
    """``([N, 2] coordinates, method)``; ``method``: umap, tsne or None (umap when installed)."""
    method = method or embedding_method()
    x = StandardScaler().fit_transform(np.asarray(features, dtype=np.float32))
    dims = min(PCA_DIMS, x.shape[0] - 1, x.shape[1])
    x = PCA(n_components=dims, random_state=seed).fit_transform(x) if dims >= 2 else x
    n = x.shape[0]
    if n < 5:
        return np.pad(x[:, :2], ((0, 0), (0, max(0, 2 - x.shape[1])))), "pca"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "umap":
            import umap

            reducer = umap.UMAP(n_neighbors=min(15, n - 1), random_state=seed)
            return reducer.fit_transform(x).astype(np.float32), "umap"
        from sklearn.manifold import TSNE

        tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed)
        return tsne.fit_transform(x).astype(np.float32), "tsne"
