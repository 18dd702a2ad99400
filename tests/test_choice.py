"""The default preset's probe-or-MLP choice per fold: recorded with its reason, the kept probe is the head
(head.pt computes it exactly), too few patients keep the probe and say so."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from featcache import make_feature_cache

from fastall.features.cache import read_cache
from fastall.head import Head
from fastall.training.choice import MARGIN_SE, decide, paired_margin
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
    assert all(f["kept"] in ("probe", "mlp") and "paired margin" in f["why"] for f in choice["folds"])
    assert "paired standard error" in choice["rule"]
    probe_folds = r.metrics["probe"]["folds"]
    for f in choice["folds"]:
        if f["kept"] == "probe":
            assert r.folds[f["fold"]]["accuracy"] == probe_folds[f["fold"]]["accuracy"]
        assert f["kept"] == decide(f["inner_split_scores"])[0]
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
    assert [f["best_epoch"] for f in r.metrics["history"]["folds"]] == [0] * len(choice["folds"])


def test_the_choice_can_be_turned_off(tmp_path, one_thread):
    cache = make_feature_cache(tmp_path / "c.h5", patients=(6, 6), dim=16, seed=1)
    r = _run(cache, tmp_path / "run", choose=False)
    assert "model_choice" not in r.metrics and r.metrics["protocol"]["choose"] is False


def _splits(mlp: list[float], probe: list[float]) -> dict:
    return {n: [{"accuracy": a, "log_loss": 0.5} for a in v] for n, v in (("mlp", mlp), ("probe", probe))}


def test_the_probe_is_kept_only_when_it_wins_beyond_one_paired_se():
    kept, why = decide(_splits([0.80, 0.70, 0.90], [0.90, 0.80, 0.95]))
    assert kept == "probe" and "beyond noise" in why
    assert paired_margin(_splits([0.80, 0.70, 0.90], [0.90, 0.80, 0.95])) < -MARGIN_SE


def test_a_noisy_probe_win_keeps_the_mlp():
    s = _splits([0.90, 0.60, 0.90], [0.70, 0.85, 0.95])  # probe higher on average, within its noise
    assert np.mean([x["accuracy"] for x in s["probe"]]) > np.mean([x["accuracy"] for x in s["mlp"]])
    assert -MARGIN_SE < paired_margin(s) < 0
    kept, why = decide(s)
    assert kept == "mlp" and "does not win beyond" in why


def test_equal_inner_scores_keep_the_mlp_which_nests_the_probe():
    assert decide(_splits([0.9, 0.8], [0.9, 0.8]))[0] == "mlp"
    assert paired_margin(_splits([0.8, 0.8], [0.9, 0.9])) == -np.inf
