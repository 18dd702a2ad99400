"""The linear-probe baseline: fits on training rows only, multi-class, deterministic, beats chance."""

from __future__ import annotations

import numpy as np
import pytest
from featcache import make_feature_cache

from fastall.features.cache import read_cache
from fastall.training.probe import C_GRID, FIXED_C, fit_probe, linear_probe, probe_cache
from fastall.training.splits import make_splits


def _blobs(classes: int, patients: int = 6, images: int = 8, dim: int = 16, seed: int = 0):
    """Class means + a per-patient offset + noise; patient names ``<class>-<n>``."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, dim)) * 1.5
    x, y, g = [], [], []
    for k in range(classes):
        for p in range(patients):
            offset = rng.standard_normal(dim) * 0.5
            x.append(means[k] + offset + rng.standard_normal((images, dim)))
            y += [k] * images
            g += [f"{k}-{p}"] * images
    return np.concatenate(x).astype(np.float32), np.asarray(y), np.asarray(g, dtype=object)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def _splits(y, g, folds=3, test="holdout", seed=0):
    return make_splits(
        y, g, np.array(["x"] * y.size, dtype=object), folds=folds, test=test, holdout=0.2, seed=seed
    )


def test_validation_and_test_rows_never_reach_a_fit():
    x, y, g = _blobs(2)
    s = _splits(y, g)
    a = linear_probe(x, y, g, s.folds, test=s.test, pool=s.pool)
    # Scramble every row the fits must not see: each fold's validation rows and the test rows.
    rng = np.random.default_rng(1)
    for i, (_, val) in enumerate(s.folds):
        x2, y2 = x.copy(), y.copy()
        hidden = np.concatenate([val, s.test])
        x2[hidden] = rng.standard_normal(x2[hidden].shape) * 50
        y2[hidden] = 1 - y2[hidden]
        b = linear_probe(x2, y2, g, s.folds[: i + 1], pool=s.pool).fits[i]  # fold i keeps its inner seed
        # equal up to float32 rounding (stacked with other folds or not); hidden rows would move them far
        assert b.c == a.fits[i].c and b.inner_loss.keys() == a.fits[i].inner_loss.keys()
        for cc, loss in a.fits[i].inner_loss.items():
            assert b.inner_loss[cc] == pytest.approx(loss, rel=1e-3)
        assert _cosine(b.coef, a.fits[i].coef) > 0.999
    x2 = x.copy()
    x2[s.test] = 0.0
    c = linear_probe(x2, y, g, s.folds, test=s.test, pool=s.pool)
    final_a, final_c = (r.fits[-1].coef for r in (a, c))
    assert _cosine(final_a, final_c) > 0.999  # the final probe is fit on the pool alone
    assert not np.allclose(a.test_probs, c.test_probs)  # ... and it does score the test rows


def test_scores_well_and_fills_out_of_fold_rows():
    x, y, g = _blobs(2)
    s = _splits(y, g)
    r = linear_probe(x, y, g, s.folds, test=s.test, pool=s.pool)
    assert len(r.folds) == 3 and r.summary["accuracy"] > 0.9 and r.test["accuracy"] > 0.9
    pooled = np.concatenate([val for _, val in s.folds])
    assert not np.isnan(r.oof_probs[pooled]).any() and np.isnan(r.oof_probs[s.test]).all()
    assert np.allclose(r.oof_probs[pooled].sum(1), 1.0)
    assert all(row["c"] in r.c_grid and row["inner_folds"] >= 2 for row in r.folds)
    assert r.to_json()["summary"]["accuracy"] == r.summary["accuracy"]


def test_multiclass():
    x, y, g = _blobs(4, patients=5, images=6)
    s = _splits(y, g, test="none")
    r = linear_probe(x, y, g, s.folds)
    assert r.oof_probs.shape == (y.size, 4) and r.test is None
    assert r.summary["accuracy"] > 0.8
    assert np.array(r.folds[0]["confusion"]).shape == (4, 4)


def test_deterministic():
    x, y, g = _blobs(3, patients=4)
    s = _splits(y, g, test="none")
    a, b = (linear_probe(x, y, g, s.folds, seed=3) for _ in range(2))
    assert np.array_equal(a.oof_probs, b.oof_probs) and a.folds == b.folds


def test_inner_cv_chooses_by_patient_and_falls_back_when_too_few():
    x, y, g = _blobs(2, patients=4)
    many = fit_probe(x, y, g, classes=2, inner_folds=3)
    assert many.inner_folds == 3 and many.c in many.inner_loss and set(many.inner_loss) <= set(C_GRID)
    assert len(many.inner_loss) >= 5  # the grid is walked until the inner loss stops improving
    one = np.isin(g, ["0-0", "1-0"])
    few = fit_probe(x[one], y[one], g[one], classes=2)
    assert few.inner_folds == 0 and few.c == FIXED_C and few.inner_loss == {}


def test_a_class_missing_from_the_training_rows_gets_zero_probability():
    x, y, g = _blobs(3, patients=3)
    train = np.flatnonzero(y < 2)
    fit = fit_probe(x[train], y[train], g[train], classes=3)
    assert fit.proba(x[:5], 3).shape == (5, 3) and np.all(fit.proba(x, 3)[:, 2] == 0)


@pytest.mark.parametrize("test", ["holdout", "none"])
def test_probe_cache_uses_the_heads_splits(tmp_path, test):
    path = make_feature_cache(
        tmp_path / "c.h5", patients=(6, 6), images_per_patient=6, views=2, dim=32, separation=3.0
    )
    cache = read_cache(path)
    s = make_splits(cache.labels, cache.patients, cache.sources, folds=3, test=test, seed=0)
    r = probe_cache(cache, s)
    assert [row["n"] for row in r.folds] == [val.size for _, val in s.folds]
    assert (r.test is None) == (test == "none")
    assert r.summary["accuracy"] > 0.8


def test_linear_fits_answers_each_row_set_with_its_own_map_and_fits_it_once(monkeypatch):
    """Two row sets whose first feature points opposite ways: each gets its own map, in the order asked, and
    a set asked again is not refitted."""
    import fastall.training.probe as probe_module
    from fastall.training.probe import LinearFits

    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(16), 8)
    y = (patients % 2).astype(np.int64)
    x = rng.normal(size=(y.size, 6)).astype(np.float32)
    first = patients < 8
    x[:, 0] += np.where(first, 2.0, -2.0) * (2 * y - 1)
    a, b = np.flatnonzero(first), np.flatnonzero(~first)
    fits = LinearFits(x, y, patients.astype(object), classes=2, seed=0)
    (ma, _), (mb, _) = fits.many([a, b])
    assert ma[1, 0] - ma[0, 0] > 0 > mb[1, 0] - mb[0, 0]
    calls = []
    monkeypatch.setattr(probe_module, "_fit_row_sets", lambda *args: calls.append(args) or ([], []))
    (mb2, _), (ma2, _) = fits.many([b, a])
    assert calls == [] and mb2 is mb and ma2 is ma
    assert fits(a)[0] is ma
