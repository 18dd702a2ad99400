"""The default preset's probe-or-MLP choice per fold: recorded with its reason, the kept probe is the head
(head.pt computes it exactly), too few patients keep the probe and say so."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from featcache import make_feature_cache

from fastall.features.cache import read_cache
from fastall.head import Head
from fastall.training.choice import LOSS_TIE, decide
from fastall.training.config import TrainOptions
from fastall.training.presets import apply_preset
from fastall.training.train_head import train_head


def _run(cache, out, **options):
    config, protocol = apply_preset("default", {"hidden": 32}, {})
    opts = TrainOptions(folds=3, device="cpu", precision="fp32", report=False, progress=False,
                        **{**protocol, **options})  # fmt: skip
    return train_head(cache, out, config, opts)


def test_the_choice_is_recorded_per_fold_and_the_kept_probe_is_the_head(tmp_path, one_thread):
    cache = make_feature_cache(tmp_path / "c.h5", patients=(9, 9), dim=32, seed=2)
    r = _run(cache, tmp_path / "run")
    choice = r.metrics["model_choice"]
    assert [f["fold"] for f in choice["folds"]] == [0, 1, 2]
    assert all(f["kept"] in ("probe", "mlp") and "inner log loss" in f["why"] for f in choice["folds"])
    assert "lower mean log loss" in choice["rule"]
    probe_folds = r.metrics["probe"]["folds"]
    for f in choice["folds"]:
        if f["kept"] == "probe":
            assert r.folds[f["fold"]]["accuracy"] == probe_folds[f["fold"]]["accuracy"]
        assert f["kept"] == decide(f["inner_accuracy"], f["inner_log_loss"])[0]
        split = f["inner_split_scores"]
        assert len(split["mlp"]) == len(split["probe"]) == f["inner_splits"]
        for name in ("mlp", "probe"):
            mean = np.mean([s["log_loss"] for s in split[name]])
            assert f["inner_log_loss"][name] == pytest.approx(mean)
    blob = torch.load(tmp_path / "run" / "head.pt", weights_only=False)
    c = read_cache(cache)
    test = np.flatnonzero(np.isin(np.arange(c.n_images), _rows_of(tmp_path / "run", "test", c)))
    head = Head.from_state(blob["head_config"], blob["state_dict"])
    with torch.no_grad():
        ours = torch.softmax(head(torch.from_numpy(c.features[test, 0].astype(np.float32))), -1).numpy()
    if choice["final"] == "probe":
        assert np.abs(ours.argmax(1) == c.labels[test]).mean() == r.metrics["probe"]["test"]["accuracy"]
        assert r.test["final"]["accuracy"] == r.metrics["probe"]["test"]["accuracy"]


def _rows_of(run, split, cache):
    import csv

    with open(run / "predictions.csv", newline="") as fh:
        paths = {row["path"] for row in csv.DictReader(fh) if row["split"] == split}
    return [i for i, p in enumerate(cache.paths) if p in paths]


def test_too_few_patients_per_class_keep_the_probe_and_say_so(tmp_path, one_thread):
    cache = make_feature_cache(tmp_path / "c.h5", patients=(4, 4), dim=16, seed=1)
    r = _run(cache, tmp_path / "run", test="none")
    choice = r.metrics["model_choice"]
    assert all(f["kept"] == "probe" and "fewer than 3 patients" in f["why"] for f in choice["folds"])
    assert any("probe kept" in w["text"] for w in r.metrics["warnings"])
    assert r.summary["accuracy"] == r.metrics["probe"]["summary"]["accuracy"]


def test_the_choice_can_be_turned_off(tmp_path, one_thread):
    cache = make_feature_cache(tmp_path / "c.h5", patients=(6, 6), dim=16, seed=1)
    r = _run(cache, tmp_path / "run", choose=False)
    assert "model_choice" not in r.metrics and r.metrics["protocol"]["choose"] is False


def test_equal_accuracy_is_decided_by_the_lower_inner_log_loss():
    acc = {"mlp": 0.9, "probe": 0.9}
    assert decide(acc, {"mlp": 0.21, "probe": 0.30})[0] == "mlp"
    kept, why = decide(acc, {"mlp": 0.30, "probe": 0.21})
    assert kept == "probe" and "inner log loss mlp 0.3000 vs probe 0.2100" in why


def test_the_log_loss_decides_even_against_a_higher_accuracy():
    assert decide({"mlp": 0.95, "probe": 0.90}, {"mlp": 0.40, "probe": 0.25})[0] == "probe"
    assert decide({"mlp": 0.85, "probe": 0.90}, {"mlp": 0.25, "probe": 0.40})[0] == "mlp"


def test_equal_log_losses_keep_the_mlp_whose_own_selection_decides():
    kept, why = decide({"mlp": 0.9, "probe": 0.9}, {"mlp": 0.3 + LOSS_TIE / 2, "probe": 0.3})
    assert kept == "mlp" and "stayed at its probe start" in why
    assert decide({"mlp": 0.9, "probe": 0.9}, {"mlp": 0.3 + 3 * LOSS_TIE, "probe": 0.3})[0] == "probe"
