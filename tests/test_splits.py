"""Patient-level splits: no patient in two of train/validation/test, enforced; clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from featcache import make_feature_cache

from fastall.errors import FastallError
from fastall.features.cache import read_cache
from fastall.training.splits import LeakageError, audit_splits, fold_table, make_splits

MANIFEST = Path(__file__).resolve().parents[1].parent / "shared/data/cnmc2019_training_manifest.txt"


def _layout(patients=(8, 12), per_patient=10, seed=0):
    rng = np.random.default_rng(seed)
    pats, labels = [], []
    for k, n in enumerate(patients):
        for p in range(n):
            m = int(rng.integers(per_patient // 2, per_patient * 2))
            pats += [f"{k}-{p}"] * m
            labels += [k] * m
    return np.array(labels), np.array(pats, dtype=object), np.array(["fold_0"] * len(labels), dtype=object)


def _assert_patient_level(splits, patients):
    test_p = set(patients[splits.test])
    seen_val = []
    for train, val in splits.folds:
        tp, vp = set(patients[train]), set(patients[val])
        assert not tp & vp and not tp & test_p and not vp & test_p
        assert set(np.concatenate([train, val])) == set(splits.pool)
        seen_val += list(vp)
    assert sorted(seen_val) == sorted(set(patients[splits.pool]))


@pytest.mark.parametrize("test", ["holdout", "none"])
@pytest.mark.parametrize("folds", [2, 5])
def test_folds_are_patient_level_and_cover_the_pool(test, folds):
    labels, patients, sources = _layout()
    splits = make_splits(labels, patients, sources, folds=folds, test=test, seed=3)
    assert len(splits.folds) == folds
    _assert_patient_level(splits, patients)
    assert (splits.test.size == 0) == (test == "none")
    rows = fold_table(splits, labels, patients, ["hem", "all"])
    assert {r["patient"] for r in rows} == set(patients)


def test_holdout_fraction_and_stratification():
    labels, patients, sources = _layout(patients=(30, 50), per_patient=20)
    splits = make_splits(labels, patients, sources, folds=5, holdout=0.1, seed=0)
    frac = splits.test.size / labels.size
    assert 0.05 < frac < 0.16
    assert set(labels[splits.test]) == {0, 1}


def test_seed_changes_folds_and_same_seed_repeats():
    labels, patients, sources = _layout()
    a = make_splits(labels, patients, sources, folds=4, seed=1)
    b = make_splits(labels, patients, sources, folds=4, seed=1)
    c = make_splits(labels, patients, sources, folds=4, seed=2)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a.folds, b.folds, strict=True))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a.folds, c.folds, strict=True))


def test_audit_catches_an_injected_leak():
    labels, patients, sources = _layout()
    splits = make_splits(labels, patients, sources, folds=5, seed=0)
    train, val = splits.folds[2]
    splits.folds[2] = (np.append(train, val[0]), val[1:])
    with pytest.raises(LeakageError, match="fold 2"):
        audit_splits(splits, patients)
    splits = make_splits(labels, patients, sources, folds=5, seed=0)
    splits.test = np.append(splits.test, splits.folds[0][0][0])
    with pytest.raises(LeakageError, match="test"):
        audit_splits(splits, patients)


def test_too_few_patients_suggests_folds():
    labels, patients, sources = _layout(patients=(3, 12))
    with pytest.raises(FastallError, match=r"only \d patients.*--folds 5: use --folds \d"):
        make_splits(labels, patients, sources, folds=5, test="none")
    make_splits(labels, patients, sources, folds=3, test="none")


def test_single_class_and_unlabelled_rows():
    labels, patients, sources = _layout()
    with pytest.raises(FastallError, match="training needs at least 2 classes"):
        make_splits(np.zeros_like(labels), patients, sources, folds=5)
    labels = np.append(labels, [-1] * 7)
    patients = np.append(patients, ["x"] * 7).astype(object)
    sources = np.append(sources, ["testing"] * 7).astype(object)
    splits = make_splits(labels, patients, sources, folds=5, seed=0)
    used = np.concatenate([splits.test, splits.pool])
    assert not np.isin(np.flatnonzero(labels < 0), used).any()


def test_prelim_mode(tmp_path):
    cache = read_cache(make_feature_cache(tmp_path / "c.h5", prelim_patients=3, testing_images=4, dim=8))
    splits = make_splits(cache.labels, cache.patients, cache.sources, folds=5, test="prelim")
    assert set(cache.sources[splits.test]) == {"prelim"}
    assert not {"prelim", "testing"} & set(cache.sources[splits.pool])
    no_prelim = read_cache(make_feature_cache(tmp_path / "d.h5", dim=8))
    with pytest.raises(FastallError, match="no labelled prelim"):
        make_splits(no_prelim.labels, no_prelim.patients, no_prelim.sources, folds=5, test="prelim")


def test_bad_arguments():
    labels, patients, sources = _layout()
    with pytest.raises(FastallError, match="--test"):
        make_splits(labels, patients, sources, test="bogus")
    with pytest.raises(FastallError, match="--holdout"):
        make_splits(labels, patients, sources, holdout=0.9)
    with pytest.raises(FastallError, match="at least 2 folds"):
        make_splits(labels, patients, sources, folds=1)


@pytest.mark.skipif(not MANIFEST.is_file(), reason="real C-NMC manifest not available")
def test_audit_on_a_cache_with_the_real_manifest_names(tmp_path):
    from fastall.data.discover import parse_cnmc_name

    names = [line.strip().rsplit("/", 1)[-1] for line in MANIFEST.read_text().splitlines() if line.strip()]
    parsed = [parse_cnmc_name(n) for n in names]
    assert all(parsed)
    patients = [p for p, _ in parsed]
    labels = np.array([1 if c == "all" else 0 for _, c in parsed])
    cache = read_cache(
        make_feature_cache(tmp_path / "real.h5", patient_ids=patients, labels=labels, dim=4, views=1)
    )
    assert len(set(cache.patients)) == 73
    for test in ("holdout", "none"):
        splits = make_splits(cache.labels, cache.patients, cache.sources, folds=5, test=test, seed=0)
        rows = audit_splits(splits, cache.patients)
        assert all(r["shared_patients"] == 0 for r in rows)
        _assert_patient_level(splits, cache.patients)
