"""`fastall compare`: one dataset or a refusal, identical folds for every backbone, and a paired patient
bootstrap equal to a slow reference."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from featcache import make_feature_cache
from sklearn.metrics import roc_auc_score

from fastall.cli import cli
from fastall.errors import FastallError
from fastall.features.cache import ImageRows, read_cache, write_cache
from fastall.training.bootstrap import paired_auc_difference, patient_codes, patient_counts, replicate_aucs
from fastall.training.config import TrainOptions
from fastall.training.rank_backbones import CompareOptions, check_same_dataset, compare_caches
from fastall.training.splits import make_splits
from fastall.training.uncertainty import bootstrap_intervals, resample_patients

LAYOUT = {"patients": (6, 7), "images_per_patient": 6, "views": 2}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two caches of the same images, labels and patients: a weak and a strong feature extractor."""
    base = tmp_path_factory.mktemp("cmp")
    weak = make_feature_cache(base / "weak.h5", dim=16, separation=0.3, seed=0, **LAYOUT)
    strong = make_feature_cache(base / "strong.h5", dim=32, separation=2.0, seed=0, **LAYOUT)
    return weak, strong


def _rename_backbone(src, dest, backbone: str, **changes):
    fc = read_cache(src)
    return write_cache(
        dest,
        features=fc.features,
        rows=ImageRows(
            labels=changes.get("labels", fc.labels),
            patients=list(changes.get("patients", fc.patients)),
            paths=list(changes.get("paths", fc.paths)),
            sources=list(fc.sources),
        ),
        class_names=fc.class_names,
        view_params=fc.view_params,
        view_param_names=fc.view_param_names,
        key_params={**fc.key_params, "backbone": backbone},
        provenance={"extract_s_per_image": 0.01, "backbone_params": 1000},
    )


def test_compare_uses_the_same_folds_for_every_backbone(pair, tmp_path):
    weak, strong = pair
    a = _rename_backbone(weak, tmp_path / "a.h5", "resnet18")
    b = _rename_backbone(strong, tmp_path / "b.h5", "mobilenet_v3_large")
    out = tmp_path / "cmp"
    args = [
        "compare",
        str(a),
        str(b),
        "--folds",
        "3",
        "--out",
        str(out),
        "--epochs",
        "15",
        "--lr",
        "1e-3",
        "--resamples",
        "300",
    ]
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "Backbones ranked by pooled out-of-fold AUC" in result.output
    assert "resnet18 vs mobilenet_v3_large: pooled out-of-fold AUC difference" in result.output
    folds = [(out / "runs" / n / "folds.csv").read_text() for n in ("resnet18", "mobilenet_v3_large")]
    assert folds[0] == folds[1]
    fc = read_cache(a, load_features=False)
    splits = make_splits(fc.labels, fc.patients, fc.sources, folds=3, seed=0, class_names=fc.class_names)
    fold_of = {row["patient"]: row["fold"] for row in csv.DictReader(folds[0].splitlines())}
    for k, (_, val) in enumerate(splits.folds):
        assert {fold_of[p] for p in fc.patients[val]} == {str(k)}
    assert {fold_of[p] for p in fc.patients[splits.test]} == {"test"}
    res = json.loads((out / "compare.json").read_text())
    best, other = res["backbones"]
    assert best["name"] == "mobilenet_v3_large" and best["rank"] == 1 and best["vs_best"] is None
    assert best["dim"] == 32 and other["dim"] == 16 and best["cost"]["extract_ms_per_image"] == 10.0
    diff = other["vs_best"]["auc"]
    assert diff["low"] <= diff["difference"] <= diff["high"]
    assert diff["difference"] == pytest.approx(other["oof"]["auc"] - best["oof"]["auc"])
    assert len(other["vs_best"]["fold_differences"]["auc"]) == 3
    assert 0.5 < best["probe"]["oof_auc"] <= 1
    rows = list(csv.DictReader((out / "compare.csv").read_text().splitlines()))
    assert [r["name"] for r in rows] == ["mobilenet_v3_large", "resnet18"]
    for e, row in zip(res["backbones"], rows, strict=True):  # the field's protocols, on the same folds
        p = e["protocols"]
        assert (
            0 <= p["knn20_oof_accuracy"] <= 1 and float(row["knn20_oof_accuracy"]) == p["knn20_oof_accuracy"]
        )
        sizes = [pt["size"] for pt in p["label_efficiency"]["linear_fixed_c"]]
        assert sizes[0] == 1 and sizes[-1] == "all" and p["linear_reach_95"] in sizes


def test_compare_refuses_caches_of_different_datasets(pair, tmp_path):
    weak, strong = pair
    fc = read_cache(weak, load_features=False)
    other = make_feature_cache(tmp_path / "other.h5", patients=(6, 8), images_per_patient=6, views=2, seed=5)
    with pytest.raises(FastallError, match="not the same dataset: .* images, .* only in"):
        compare_caches([weak, other], tmp_path / "o1")
    flipped = fc.labels.copy()
    flipped[3] = 1 - flipped[3]
    relabelled = _rename_backbone(strong, tmp_path / "relabelled.h5", "x", labels=flipped)
    with pytest.raises(FastallError, match=r"labels differ for 1 images \(e.g. img/000003.bmp"):
        check_same_dataset(
            [read_cache(weak, load_features=False), read_cache(relabelled, load_features=False)]
        )
    moved = list(fc.patients)
    moved[0] = "Z9"
    repatiented = _rename_backbone(strong, tmp_path / "patients.h5", "x", patients=moved)
    with pytest.raises(FastallError, match="patients differ for 1 images"):
        compare_caches([weak, repatiented], tmp_path / "o2")
    with pytest.raises(FastallError, match="the same cache is given twice"):
        compare_caches([weak, weak], tmp_path / "o3")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_compare_with_a_sweep_per_backbone(pair, tmp_path):
    run = TrainOptions(folds=2, test="none", device="cpu")
    options = CompareOptions(run=run, sweep="lr=1e-4,1e-3 epochs=2", resamples=200)
    result = compare_caches(list(pair), tmp_path / "cmp", options=options)
    for entry in result.backbones:
        assert entry["config"]["lr"] in (1e-4, 1e-3) and entry["config"]["epochs"] == 2
        assert (tmp_path / "cmp" / "sweeps" / entry["name"] / "results.json").is_file()


def _slow_resample(groups, counts_row):
    return np.concatenate([np.repeat(np.flatnonzero(groups == p), int(c)) for p, c in enumerate(counts_row)])


def test_paired_bootstrap_matches_a_slow_reference():
    rng = np.random.default_rng(1)
    patients = rng.permutation(np.repeat([f"p{i:02d}" for i in range(12)], rng.integers(1, 6, 12)))
    labels = np.array([int(p[1:]) % 2 for p in patients])
    names = sorted(set(patients.tolist()))
    groups = np.array([names.index(p) for p in patients])  # patients in sorted order, images shuffled
    assert np.array_equal(patient_codes(patients), groups)
    a = np.round(rng.random(len(labels)) + 0.4 * labels, 1)  # ties on purpose
    b = np.round(rng.random(len(labels)), 1)
    counts = np.zeros((80, 12))
    for r, draw in enumerate(resample_patients(12, 80, seed=3)):
        for d in draw:
            counts[r, d] += 1
    assert np.array_equal(patient_counts(12, 80, seed=3), counts)
    ref_a, ref_b = [], []
    for row in counts:
        idx = _slow_resample(groups, row)
        two = len(set(labels[idx])) == 2
        ref_a.append(roc_auc_score(labels[idx], a[idx]) if two else np.nan)
        ref_b.append(roc_auc_score(labels[idx], b[idx]) if two else np.nan)
    np.testing.assert_allclose(replicate_aucs(labels, a, groups, counts), ref_a, atol=1e-12)
    diff = paired_auc_difference(labels, a, b, patients, resamples=80, seed=3)
    ref = np.array(ref_a) - np.array(ref_b)
    low, high = np.percentile(ref[np.isfinite(ref)], [2.5, 97.5])
    assert diff["low"] == pytest.approx(low) and diff["high"] == pytest.approx(high)
    assert diff["difference"] == pytest.approx(roc_auc_score(labels, a) - roc_auc_score(labels, b))
    assert diff["distinguishable"] == (low > 0 or high < 0)
    # the same resamples as the interval train-head records for each model alone
    single = bootstrap_intervals(labels, np.stack([1 - a, a], 1), patients, resamples=80, seed=3)
    finite = np.array(ref_a)[np.isfinite(ref_a)]
    assert single["intervals"]["auc"] == pytest.approx(list(np.percentile(finite, [2.5, 97.5])))


def test_a_clear_difference_is_distinguishable_and_a_null_one_is_not():
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(40), 10)
    labels = (patients % 2).astype(int)
    good = labels + rng.normal(0, 0.5, labels.size)
    bad = labels + rng.normal(0, 3.0, labels.size)
    assert paired_auc_difference(labels, good, bad, patients, resamples=500)["distinguishable"]
    same = paired_auc_difference(
        labels, good, good + rng.normal(0, 1e-3, labels.size), patients, resamples=500
    )
    assert not same["distinguishable"]
