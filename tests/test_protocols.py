"""`fastall probe`'s protocols against sklearn: the stacked logistic probes, cosine kNN, the label-efficiency
draws, the batch-effect score (on features of real synthetic images with and without a patient effect)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from fastall.training.protocols import knn
from fastall.training.protocols.batch_effect import batch_effect
from fastall.training.protocols.efficiency import draws, label_efficiency, sizes_for
from fastall.training.protocols.linear import linear_protocol
from fastall.training.protocols.logistic import Problem, fit_logistic


def _data(classes: int, n: int = 480, dim: int = 48, patients: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    pat_class = np.arange(patients) % classes
    pat = rng.integers(0, patients, n)
    y = pat_class[pat]
    centre = rng.standard_normal((classes, dim)) * 0.6
    offset = rng.standard_normal((patients, dim)) * 0.5
    x = 3.0 + 2.0 * (centre[y] + offset[pat] + rng.standard_normal((n, dim)))
    return x.astype(np.float32), y.astype(np.int64), np.array([f"P{p}" for p in pat], dtype=object)


def _folds(y, groups, n=4, seed=0):
    sgkf = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(va)) for tr, va in sgkf.split(np.zeros(y.size), y, groups)]


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("layout", ["shared", "padded"])
def test_stacked_logistic_probes_equal_sklearn(classes, layout, one_thread):
    """Every (C, fold) problem fitted at once equals its own sklearn pipeline: accuracy within 1e-3,
    coefficient cosine above 0.99."""
    x, y, groups = _data(classes)
    folds = _folds(y, groups)
    problems = [Problem(tr, c) for tr, _ in folds for c in (1e-3, 0.1, 10.0)]
    fits = fit_logistic(torch.from_numpy(x), y, problems, classes, layout=layout, tol=1e-5)
    for m, p in enumerate(problems):
        val = next(va for tr, va in folds if tr is p.rows)
        scaler = StandardScaler().fit(x[p.rows])
        ref = LogisticRegression(C=p.c, tol=1e-8, max_iter=10000).fit(scaler.transform(x[p.rows]), y[p.rows])
        a, b = ref.coef_.ravel(), fits.sklearn_coef(m).ravel()
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99
        ours = (fits.proba_one(m, torch.from_numpy(x[val])).argmax(1) == y[val]).mean()
        theirs = (ref.predict(scaler.transform(x[val])) == y[val]).mean()
        assert abs(ours - theirs) <= 1e-3, (p.c, ours, theirs)


def test_linear_protocol_chooses_c_by_inner_patient_cv_and_refits(one_thread):
    x, y, groups = _data(2)
    folds = _folds(y, groups)
    res = linear_protocol(torch.from_numpy(x), y, groups, [tr for tr, _ in folds], 2, seed=0)
    assert len(res.chosen) == len(folds) and all(c in res.c_grid for c in res.chosen)
    assert all(n >= 2 for n in res.inner_folds)
    for i, (tr, va) in enumerate(folds):
        curve = [v for v in res.inner_loss[i] if v is not None]
        at = res.c_grid.index(res.chosen[i])  # the C of the lowest inner log loss
        assert res.inner_loss[i][at] == min(curve)
        scaler = StandardScaler().fit(x[tr])
        ref = LogisticRegression(C=res.chosen[i], max_iter=5000).fit(scaler.transform(x[tr]), y[tr])
        ours = res.proba(i, torch.from_numpy(x[va])).argmax(1)
        assert abs((ours == y[va]).mean() - ref.score(scaler.transform(x[va]), y[va])) <= 1e-3


@pytest.mark.parametrize("classes", [2, 4])
def test_knn_equals_sklearn_kneighbors_on_the_same_folds(classes, one_thread):
    """Plain and temperature-weighted votes: the same accuracies as KNeighborsClassifier (cosine, brute)."""
    x, y, groups = _data(classes)
    for tr, va in _folds(y, groups):
        scaler = StandardScaler().fit(x[tr])
        sim = knn.similarities(torch.from_numpy(x), tr, va)
        ours = knn.votes(sim, y[tr], classes, ks=(1, 5, 20, 50), temperature=0.07)
        for k in (1, 5, 20, 50):
            for vote, weights in (("plain", "uniform"), ("weighted", lambda d: np.exp(-d / 0.07))):
                ref = KNeighborsClassifier(k, weights=weights, metric="cosine", algorithm="brute")
                ref.fit(scaler.transform(x[tr]), y[tr])
                expected = ref.predict(scaler.transform(x[va]))
                got = knn.predict(ours[k, vote])
                assert (got == y[va]).mean() == pytest.approx((expected == y[va]).mean(), abs=1e-12)


@pytest.mark.parametrize("width", [8, 45, 10_000])
def test_knn_on_a_subset_reads_the_ranking_exactly(width, one_thread, monkeypatch):
    """A subset of the training columns gives the same votes through the fold's ranking (narrow: most rows
    fall back to the exact top-k; wide: the ranking covers every column) as without it."""
    monkeypatch.setattr(knn, "MARGIN", 0.0)  # read the ranking whenever it is narrower than the columns
    x, y, groups = _data(3)
    tr, va = _folds(y, groups)[0]
    sim = knn.similarities(torch.from_numpy(x), tr, va)
    ranking = knn.ranked(sim, width)
    rng = np.random.default_rng(0)
    for size in (3, 25, tr.size // 2, tr.size - 1):
        cols = np.sort(rng.choice(tr.size, size, replace=False))
        exact = knn.votes(sim, y[tr], 3, ks=(1, 5, 20), columns=cols)
        fast = knn.votes(sim, y[tr], 3, ks=(1, 5, 20), columns=cols, ranking=ranking)
        for key, shares in exact.items():
            assert np.allclose(shares, fast[key], atol=1e-12), (width, size, key)
    sub = knn.votes(sim[:, :40], y[tr][:40], 3, ks=(5,))
    assert np.allclose(sub[5, "plain"], knn.votes(sim, y[tr], 3, ks=(5,), columns=np.arange(40))[5, "plain"])


def test_label_efficiency_draws_never_put_a_patient_on_both_sides():
    x, y, groups = _data(2, patients=30)
    folds = _folds(y, groups, n=3)
    all_draws = draws(y, groups, folds, repeats=4, seed=1)
    for d in all_draws:
        tr, va = folds[d.fold]
        assert not set(groups[d.rows]) & set(groups[va])
        assert set(d.rows) <= set(tr)
        per_class = [len({g for g in d.patients if y[groups == g][0] == c}) for c in (0, 1)]
        available = [len(set(groups[tr][y[tr] == c])) for c in (0, 1)]
        assert per_class == [min(d.size, a) for a in available]
    sizes = {d.key for d in all_draws}
    assert {1, 2, 4, 8, "all"} <= sizes
    assert sizes_for([3, 9]) == [1, 2, 4, 8, 9]
    again = draws(y, groups, folds, repeats=4, seed=1)
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(all_draws, again, strict=True))
    other = draws(y, groups, folds, repeats=4, seed=2)
    assert any(not np.array_equal(a.rows, b.rows) for a, b in zip(all_draws, other, strict=True))


def test_label_efficiency_curves_rise_and_say_where_they_reach_95_percent(one_thread):
    x, y, groups = _data(2, patients=30)
    folds = _folds(y, groups, n=3)
    out = label_efficiency(torch.from_numpy(x), y, groups, folds, 2, c=0.1, ks=(5, 20), repeats=3)
    lin = out["curves"]["linear_fixed_c"]
    assert [p["size"] for p in lin["points"]][-1] == "all"
    assert lin["points"][-1]["accuracy"] >= lin["points"][0]["accuracy"]
    full = lin["points"][-1]["accuracy"]
    reached = next(p for p in lin["points"] if p["size"] == lin["reach_95"])
    assert reached["accuracy"] >= 0.95 * full
    assert {"knn5_plain", "knn20_weighted"} <= set(out["curves"])


def _synth_cache(base, effect: float):
    from fastall.data.synth import GENERIC_PATIENT_REGEX, synthesize
    from fastall.features.cache import read_cache
    from fastall.features.extract import extract

    synthesize(base / "data", patients_per_class=6, images_per_patient=8, size=48, seed=5, prelim=False,
               layout="generic", classes=2, patient_effect=effect)  # fmt: skip
    extract(base / "data", base / "cache.h5", views=1, image_size=32, weights="none", device="cpu", amp=False,
            workers=0, patient_regex=GENERIC_PATIENT_REGEX)  # fmt: skip
    return read_cache(base / "cache.h5")


def test_batch_effect_warns_on_a_strong_patient_effect_and_not_without(tmp_path, one_thread):
    """`synth --patient-effect 5` against `--patient-effect 0`: same cells and seed, a random-init ResNet."""
    scores = {}
    for effect in (0.0, 5.0):
        cache = _synth_cache(tmp_path / str(effect), effect)
        x = torch.from_numpy(cache.features[:, 0].astype(np.float32))
        scores[effect] = batch_effect(x, cache.labels, cache.patients)
    strong, none = scores[5.0], scores[0.0]
    assert strong["warning"] and "separate patients more than classes" in strong["warning"]
    assert none["warning"] is None
    assert strong["same_patient_excess_ci"][0] > none["same_patient_excess_ci"][1]
    pid = strong["patient_identification"]
    assert pid["accuracy"] > 3 * pid["chance_knowing_class"] > pid["chance_uniform"]


def test_batch_effect_without_patient_groups_says_so():
    x, y, _ = _data(2, n=120)
    out = batch_effect(torch.from_numpy(x), y, np.array([f"i{i}" for i in range(y.size)]))
    assert out["warning"] is None and out["patient_identification"] is None and "own patient" in out["note"]
