"""`fastall probe`'s protocols on the real-size cache against the plain sklearn loop a user would write, in
one run: linear (the C grid by inner patient-grouped CV on every fold and the pool, then the refits), kNN
(every k, both votes), label efficiency (5 draws x every size), the batch-effect score; the map on its own.

The sklearn loop: ``Pipeline(StandardScaler, LogisticRegression(lbfgs))`` per (row set, inner split, C) and
the refits; ``KNeighborsClassifier(metric="cosine", algorithm="brute")`` per fold, k and vote; per draw one
pipeline and one kNN; ``NearestNeighbors(cosine)`` for the batch-effect neighbours. The linear grid and the
label-efficiency fits are timed on a sample (``--sample`` fits per kind, spread over the grid and the sizes)
and extrapolated to the full count (recorded as such); kNN and the neighbours are timed in full. Label
efficiency reads the kNN protocol's similarity matrices, as `fastall probe` does. The load average before
and after is recorded: the figure is only meaningful on a quiet machine.

    PYTHONPATH=$PWD python3 benchmarks/probe_protocols_speed.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from featcache import real_size_cache  # noqa: E402

from benchmarks.common import write_result  # noqa: E402


def main() -> None:
    import torch
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fastall.features.cache import read_cache
    from fastall.training.protocols import knn
    from fastall.training.protocols.batch_effect import batch_effect
    from fastall.training.protocols.efficiency import draws, label_efficiency
    from fastall.training.protocols.embedding import embed_2d, embedding_method
    from fastall.training.protocols.linear import C_GRID, FIXED_C, linear_protocol
    from fastall.training.selection import inner_splits
    from fastall.training.splits import make_splits

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "fastall-real-size-8v.h5")
    parser.add_argument("--sample", type=int, default=6)
    parser.add_argument("--no-map", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/probe_protocols_cpu.json")
    args = parser.parse_args()
    real_size_cache(args.cache, views=8)
    load_before = list(os.getloadavg())
    cache = read_cache(args.cache)
    labels, patients = cache.labels, np.asarray(cache.patients, dtype=object)
    splits = make_splits(labels, patients, cache.sources, folds=5, test="holdout", seed=0)
    view0 = np.ascontiguousarray(cache.features[:, 0], dtype=np.float32)
    x = torch.from_numpy(view0)
    k = len(cache.class_names)
    row_sets = [tr for tr, _ in splits.folds] + [splits.pool]
    pairs = [*splits.folds, (splits.pool, splits.test)]
    ours: dict[str, float] = {}

    t0 = time.perf_counter()
    lin = linear_protocol(x, labels, patients, row_sets, k, seed=0)
    ours["linear_s"] = time.perf_counter() - t0
    visited = sum(v is not None for row in lin.inner_loss for v in row)
    t0 = time.perf_counter()
    sims = []  # the folds' similarity matrices, kept for label efficiency as `fastall probe` keeps them
    for i, (tr, va) in enumerate(pairs):
        sim = knn.similarities(x, tr, va)
        knn.votes(sim, labels[tr], k)
        if i < len(splits.folds):
            sims.append(sim)
    ours["knn_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    eff = label_efficiency(x, labels, patients, splits.folds, k, c=FIXED_C, repeats=5, seed=0, sims=sims)
    ours["label_efficiency_s"] = time.perf_counter() - t0
    del sims
    t0 = time.perf_counter()
    be = batch_effect(x[splits.pool], labels[splits.pool], patients[splits.pool])
    ours["batch_effect_s"] = time.perf_counter() - t0
    ours["total_s"] = sum(ours.values())

    warnings.simplefilter("ignore", ConvergenceWarning)
    sk: dict[str, dict] = {}
    inner = [inner_splits(labels, patients, r, seed=0, fold=i, folds=5) for i, r in enumerate(row_sets)]
    grid_fits = [(i, j, c) for i in range(len(row_sets)) for j in range(len(inner[i])) for c in C_GRID]
    pick = np.linspace(0, len(grid_fits) - 1, args.sample).round().astype(int)
    t0 = time.perf_counter()
    for n in pick:
        i, j, c = grid_fits[n]
        tr = inner[i][j][0]
        make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(view0[tr], labels[tr])
    per_fit = (time.perf_counter() - t0) / len(pick)
    refits = 2 * len(row_sets)
    sk["linear"] = {
        "fits_full_grid": len(grid_fits) + refits,
        "fits_visited": visited * 5 + refits,
        "sampled_fits": len(pick),
        "seconds_per_fit": per_fit,
        "full_grid_s_extrapolated": per_fit * (len(grid_fits) + refits),
        "visited_s_extrapolated": per_fit * (visited * 5 + refits),
    }
    t0 = time.perf_counter()
    for tr, va in pairs:
        scaler = StandardScaler().fit(view0[tr])
        a, b = scaler.transform(view0[tr]), scaler.transform(view0[va])
        for kk in knn.KS:
            for weights in ("uniform", lambda d: np.exp(-d / knn.TEMPERATURE)):
                KNeighborsClassifier(kk, weights=weights, metric="cosine", algorithm="brute").fit(
                    a, labels[tr]
                ).predict_proba(b)
    sk["knn"] = {"s": time.perf_counter() - t0}
    all_draws = draws(labels, patients, splits.folds, repeats=5, seed=0)
    pick = np.linspace(0, len(all_draws) - 1, args.sample).round().astype(int)
    t0 = time.perf_counter()
    for n in pick:
        d = all_draws[n]
        va = splits.folds[d.fold][1]
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=FIXED_C, max_iter=1000))
        pipe.fit(view0[d.rows], labels[d.rows]).predict_proba(view0[va])
        scaler = StandardScaler().fit(view0[d.rows])
        for kk in knn.KS:
            for weights in ("uniform", lambda dd: np.exp(-dd / knn.TEMPERATURE)):
                KNeighborsClassifier(
                    min(kk, d.rows.size), weights=weights, metric="cosine", algorithm="brute"
                ).fit(scaler.transform(view0[d.rows]), labels[d.rows]).predict_proba(
                    scaler.transform(view0[va])
                )
    per_draw = (time.perf_counter() - t0) / len(pick)
    sk["label_efficiency"] = {
        "draws": len(all_draws),
        "sampled_draws": len(pick),
        "seconds_per_draw": per_draw,
        "s_extrapolated": per_draw * len(all_draws),
    }
    t0 = time.perf_counter()
    xs = StandardScaler().fit_transform(view0[splits.pool])
    NearestNeighbors(n_neighbors=11, metric="cosine", algorithm="brute").fit(xs).kneighbors(xs)
    sk["batch_effect_neighbours"] = {"s": time.perf_counter() - t0}
    sk_total = (
        sk["linear"]["full_grid_s_extrapolated"]
        + sk["knn"]["s"]
        + sk["label_efficiency"]["s_extrapolated"]
        + sk["batch_effect_neighbours"]["s"]
    )
    result = {
        "settings": {
            "cache": "real-size synthetic: 10,661 x 8 x 2048, the manifest's 73 patients",
            "folds": 5,
            "test": "holdout",
            "c_grid": len(C_GRID),
            "inner_folds": 5,
            "ks": list(knn.KS),
            "draws": 5,
            "label_efficiency_sizes": sorted({str(d.key) for d in all_draws}),
            "torch_threads": torch.get_num_threads(),
        },
        "fastall": ours,
        "sklearn_loop": sk,
        "sklearn_total_s_extrapolated": sk_total,
        "speedup_total": sk_total / ours["total_s"],
        "goal": "every protocol but the map <= 60 s on 2 CPU cores",
        "meets_goal": ours["total_s"] <= 60,
        "chosen_c": lin.chosen,
        "linear_pooled_accuracy_note": "features are random with a weak class signal (separation 0.15)",
        "batch_effect_same_patient_share": be["same_patient_share"],
        "label_efficiency_reach_95": {n: c["reach_95"] for n, c in eff["curves"].items()},
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
    }
    if not args.no_map:
        result["map"] = {}
        for method in ("umap", "tsne") if embedding_method() == "umap" else ("tsne",):
            t0 = time.perf_counter()
            embed_2d(cache.features[np.flatnonzero(labels >= 0), 0], seed=0, method=method)
            seconds = time.perf_counter() - t0
            result["map"][method] = {
                "points": int((labels >= 0).sum()),
                "s": seconds,
                "meets_goal": seconds <= 60,
            }
        result["map"]["note"] = "umap: the first call includes numba's compilation"
    print(write_result(args.out, result))


if __name__ == "__main__":
    main()
