"""Presets, selection on an inner split, nested tuning and the linear-probe baseline in train-head."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from featcache import make_feature_cache

from fastall.cli import cli
from fastall.errors import FastallError
from fastall.features.cache import read_cache
from fastall.training.config import HeadConfig, Plan, StackData, TrainOptions
from fastall.training.engine import train_stacks
from fastall.training.presets import PRESETS, apply_preset
from fastall.training.selection import inner_splits, select
from fastall.training.splits import make_splits
from fastall.training.train_head import train_head

GOLDEN = Path(__file__).parent / "fixtures" / "paper_preset"
V0_1 = Path(__file__).parent / "fixtures" / "v0_1" / "cache.h5"
SMALL = HeadConfig(hidden=16, epochs=6, lr=1e-3, patience=2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_feature_cache(tmp_path_factory.mktemp("sel") / "c.h5", patients=(6, 6), images_per_patient=6)


def _data(path: Path, folds: int = 3) -> tuple[StackData, np.ndarray]:
    c = read_cache(path)
    s = make_splits(c.labels, c.patients, c.sources, folds=folds, test="holdout", seed=0)
    feats = torch.from_numpy(np.ascontiguousarray(c.features))
    return StackData(feats, c.labels, 2, s.folds, s.pool, s.test, view_mode="all"), c.patients


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_inner_split_is_inside_the_training_patients_and_patient_disjoint(cache):
    data, patients = _data(cache)
    for k, (train, val) in enumerate(data.folds):
        [(a, b)] = inner_splits(data.labels, patients, train, seed=0, fold=k)
        assert set(a) | set(b) == set(train) and not set(a) & set(b)
        assert not set(patients[a]) & set(patients[b])
        assert not set(patients[b]) & set(patients[val])
        assert set(data.labels[b]) == set(data.labels[train])
        [(c, d)] = inner_splits(data.labels, patients, train, seed=0, fold=k)
        assert np.array_equal(a, c) and np.array_equal(b, d)
        three = inner_splits(data.labels, patients, train, seed=0, fold=k, folds=3)
        assert len(three) == 3 and sorted(np.concatenate([v for _, v in three])) == sorted(train)


def test_too_few_patients_for_an_inner_split_says_how_many():
    labels = np.array([0, 0, 1, 1])
    patients = np.array(["a", "b", "c", "c"], dtype=object)
    with pytest.raises(FastallError, match=r"at least 2 training patients of each class \(class 1: 1\)"):
        inner_splits(labels, patients, np.arange(4), seed=0, fold=3)


def test_the_inner_selection_never_sees_the_outer_validation_patients(cache):
    """Scramble features and labels of one fold's validation rows: that fold's choice, kept epoch and inner
    losses do not move."""
    data, patients = _data(cache)
    configs = [SMALL, replace(SMALL, lr=1e-4), replace(SMALL, weight_decay=1e-2)]
    a = select(data, configs, patients, seed=0, precision="fp32")
    for k, (_, val) in enumerate(data.folds):
        feats = data.features.clone()
        feats[torch.as_tensor(val)] = torch.randn(feats[val].shape).mul(50).to(feats.dtype)
        labels = data.labels.copy()
        labels[val] = 1 - labels[val]
        b = select(replace(data, features=feats, labels=labels), configs, patients, seed=0, precision="fp32")
        assert b.chosen[k] == a.chosen[k] and b.plans[k] == a.plans[k]
        assert b.inner_loss[k] == a.inner_loss[k]
    assert a.chosen == [int(np.argmin(row)) for row in a.inner_loss]


def test_a_planned_head_follows_its_plan(cache):
    data, _ = _data(cache)
    plan = Plan(3, (1e-3, 5e-4, 1e-4))
    cfg = replace(SMALL, epochs=50, patience=1)  # neither applies to a planned head
    r = train_stacks(replace(data, plans=[plan] * len(data.folds), final_plan=plan), [cfg], final=True)
    for head in r:
        assert head.epochs_run == head.best_epoch == 3
        assert head.history["lr"] == list(plan.lr)


def test_min_steps_raises_the_epochs_on_small_data(cache):
    data, _ = _data(cache)
    steps = -(-len(data.folds[0][0]) // 32)
    cfg = replace(HeadConfig(hidden=8, epochs=2), min_steps=10 * steps)
    assert cfg.epoch_limit(steps) == 10 and HeadConfig().epoch_limit(steps) == 5
    r = train_stacks(replace(data, folds=data.folds[:1]), [cfg])
    assert r[0].epochs_run == 10


@pytest.mark.parametrize("name", ["v0_1", "featcache"])
def test_the_paper_preset_reproduces_the_numbers_before_presets(name, tmp_path):
    cache = V0_1 if name == "v0_1" else make_feature_cache(tmp_path / "c.h5", seed=3)
    args = ["--folds", "2", "--hidden", "16", "--epochs", "2"] if name == "v0_1" else ["--folds", "3"]
    out = tmp_path / "run"
    res = CliRunner().invoke(
        cli,
        ["train-head", str(cache), "--out", str(out), "--preset", "paper", "--device", "cpu", "--precision",
         "fp32", "--no-report", *args],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    want = json.loads((GOLDEN / f"{name}_metrics.json").read_text())
    got = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "auc", "log_loss"):
        assert got["summary"][key] == pytest.approx(want["summary"][key], abs=1e-6)
        assert [f[key] for f in got["folds"]] == pytest.approx([f[key] for f in want["folds"]], abs=1e-6)
    old, new = _rows(GOLDEN / f"{name}_predictions.csv"), _rows(out / "predictions.csv")
    assert [r["path"] for r in old] == [r["path"] for r in new]
    second = got["classes"]["names"][1]  # the old files held P(class 1) as "probability"
    for a, b in zip(old, new, strict=True):
        assert a["prediction"] == b["predicted_class"] and a["fold"] == b["fold"]
        assert a["label"] == b["true_class"]
        assert float(a["probability"]) == pytest.approx(float(b[f"p_{second}"]), abs=2e-6)
    assert got["protocol"] == {
        "preset": "paper", "train_views": "augmented", "selection": "fold", "optimistic": True, "tune": None,
        "inner_folds": None, "head_init": "random", "choose": False,
    }  # fmt: skip
    assert "optimistic" in res.output and "linear probe" in res.output


def test_the_default_run_carries_the_probe_baseline_and_the_view_shift(cache, tmp_path):
    config, protocol = apply_preset("default", {"hidden": 16}, {})
    r = train_head(cache, tmp_path / "run", config, TrainOptions(folds=3, device="cpu", report=False,
                   progress=False, **protocol))  # fmt: skip
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["protocol"]["selection"] == "inner" and not m["protocol"]["optimistic"]
    assert m["probe"]["summary"]["accuracy"] == pytest.approx(m["baseline"]["cv_accuracy"])
    gap = m["summary"]["accuracy"] - m["probe"]["summary"]["accuracy"]
    assert m["baseline"]["head_minus_probe_cv_accuracy"] == pytest.approx(gap)
    assert m["probe"]["test"] is not None and m["test"] is not None
    assert 0 <= m["feature_shift"]["smd"] < 1
    sel = m["selection"]["folds"]
    assert len(sel) == 3 and all(f["kept_epoch"] == r.folds[f["fold"]]["best_epoch"] for f in sel)
    val_patients = [set(read_cache(cache).patients[v]) for _, v in r_splits(cache)]
    for f in sel:
        assert not set(f["inner_val_patients"]) & val_patients[f["fold"]]


def r_splits(cache: Path):
    c = read_cache(cache)
    return make_splits(c.labels, c.patients, c.sources, folds=3, test="holdout", seed=0).folds


def test_tune_reports_the_inner_choice_and_trains_the_final_head_with_it(cache, tmp_path):
    runner = CliRunner()
    out = tmp_path / "tuned"
    res = runner.invoke(
        cli,
        ["train-head", str(cache), "--out", str(out), "--folds", "3", "--hidden", "16", "--device", "cpu",
         "--no-report", "--tune", "lr=1e-4,1e-3 weight_decay=0,1e-2"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["tune"]["configs"]) == 4
    for f in m["selection"]["folds"]:
        assert f["chosen_config"] == int(np.argmin(f["inner_val_loss"]))
    final = m["tune"]["configs"][m["selection"]["final_config"]]
    assert m["config"]["lr"] == final["lr"] and m["config"]["weight_decay"] == final["weight_decay"]
    assert "tuned over" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "nope"], "'nope' is not one of 'paper', 'default'"),
        (["--tune", "lr"], "bad --tune token 'lr': expected name=value"),
        (["--tune", "depth=3"], "bad --tune token 'depth=3': unknown parameter 'depth' (known: lr,"),
        (["--tune", "lr=fast"], "bad --tune token 'lr=fast': 'fast' is not a number"),
        (["--tune", "lr=1e-4", "--preset", "paper"], "--tune chooses on an inner split"),
        (["--train-views", "some"], "'some' is not one of 'augmented', 'all'"),
        (["--patience", "soon"], "'soon' is not an integer or none"),
    ],
)
def test_bad_protocol_options_get_one_line(cache, tmp_path, args, message):
    res = CliRunner().invoke(cli, ["train-head", str(cache), "--out", str(tmp_path / "r"), *args])
    assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_presets_are_valid_configurations():
    for p in PRESETS.values():
        p.config.check()
    assert PRESETS["paper"].config == HeadConfig() and PRESETS["paper"].optimistic


def test_a_fold_without_an_inner_split_trains_a_fixed_schedule_and_says_so(tmp_path):
    cache = make_feature_cache(tmp_path / "tiny.h5", patients=(3, 3), images_per_patient=4)
    config, protocol = apply_preset("default", {"hidden": 8, "min_steps": None, "epochs": 4}, {})
    options = TrainOptions(folds=2, test="none", device="cpu", report=False, progress=False, **protocol)
    r = train_head(cache, tmp_path / "run", config, options)
    notes = [w["text"] for w in r.metrics["warnings"] if "fixed schedule" in w["text"]]
    assert notes and "at least 2 training patients of each class" in notes[0]
    fixed = [f for f in r.metrics["selection"]["folds"] if f.get("fallback")]
    assert fixed and all(f["kept_epoch"] == 4 for f in fixed)
    assert all(f["epochs_run"] == 4 for f in r.folds if f["fold"] in {x["fold"] for x in fixed})
    with pytest.raises(FastallError, match="at least 2 training patients"):
        train_head(cache, tmp_path / "t", config, replace(options, tune="lr=1e-4,1e-3"))


def test_on_hard_data_the_default_head_holds_the_probe_where_the_paper_protocol_falls_behind(tmp_path):
    """Patient effects as large as the class effect, few images: the bar of issue 11 in miniature, both
    numbers from one run (the full measurement is benchmarks/head_vs_probe.py)."""
    cache = make_feature_cache(
        tmp_path / "hard.h5", patients=(8, 8), images_per_patient=8, dim=256, separation=0.7,
        patient_spread=1.0, loc=20.0, scale=20.0, seed=6,
    )  # fmt: skip
    runs = {}
    for name in ("default", "paper"):
        config, protocol = apply_preset(name, {}, {})
        options = TrainOptions(folds=4, test="none", device="cpu", precision="fp32", report=False,
                               progress=False, **protocol)  # fmt: skip
        runs[name] = train_head(cache, tmp_path / name, config, options).metrics
    probe = runs["default"]["probe"]["summary"]["accuracy"]
    assert runs["paper"]["probe"]["summary"]["accuracy"] == probe  # the same folds, the same baseline
    assert runs["default"]["summary"]["accuracy"] >= probe - 0.01
    assert runs["paper"]["summary"]["accuracy"] < probe - 0.01


def test_min_delta_counts_only_clear_improvements():
    from fastall.training.layout import HeadState
    from fastall.training.validation import end_fold_epoch

    hd = HeadState(0, replace(HeadConfig(), patience=2, min_delta=0.03), 0, False, 1e-3, limit=10)
    hd.best_loss = 1.0  # the starting point (a probe-initialised head's epoch 0)
    assert not end_fold_epoch(hd, 0, 0.98, 0.5)  # 2 % lower: not better
    assert hd.best_epoch == 0 and hd.alive
    assert not end_fold_epoch(hd, 1, 0.975, 0.5)
    assert not hd.alive  # two epochs without a clear improvement: the start is kept
    hd = HeadState(0, replace(HeadConfig(), patience=2), 0, False, 1e-3, limit=10)
    hd.best_loss = 1.0
    assert end_fold_epoch(hd, 0, 0.98, 0.5) and hd.best_epoch == 1


def test_view_shift_is_the_standardised_mean_difference():
    from fastall.training.views import SMD_LIMIT, view_shift

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((400, 3, 8)).astype(np.float32)
    feats[:, 1:] += 0.5  # every feature moves half a standard deviation in the augmented views
    shift = view_shift(feats, np.arange(400), "augmented")
    assert shift["smd"] == pytest.approx(0.5, abs=0.08) and shift["large"] and SMD_LIMIT < 0.5
    assert "--train-views all" in shift["message"]
    same = view_shift(rng.standard_normal((400, 3, 8)).astype(np.float32), np.arange(400), "all")
    assert same["smd"] < 0.15 and not same["large"] and same["message"] == ""
