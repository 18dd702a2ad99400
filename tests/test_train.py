"""train-head: the engine against autograd + torch.optim.Adam, outputs, determinism, atomic folders."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from featcache import make_feature_cache

from fastall.cli import cli
from fastall.errors import FastallError
from fastall.features.cache import read_cache
from fastall.head import Head, head_from_state_dict
from fastall.training.config import HeadConfig, StackData, TrainOptions
from fastall.training.engine import Stack
from fastall.training.optim import plateau_update
from fastall.training.streams import dropout_lanes, dropout_threshold, epoch_order, fold_statistics, init_head
from fastall.training.train_head import train_head

FAST = {"hidden": 32, "epochs": 3, "lr": 1e-3, "progress": False, "device": "cpu"}
HEAD_FIELDS = {p.name for p in HeadConfig.hparams()}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_feature_cache(
        tmp_path_factory.mktemp("c") / "c.h5", patients=(8, 10), images_per_patient=10, dim=32, views=3
    )


def _data(path: Path, folds: int = 2) -> StackData:
    c = read_cache(path)
    rows = np.arange(c.n_images)
    rng = np.random.default_rng(0)
    rng.shuffle(rows)
    cut = len(rows) * 3 // 4
    fold_list = [(np.sort(rows[:cut]), np.sort(rows[cut:]))] * folds
    return StackData(torch.from_numpy(c.features), c.labels, 2, fold_list, np.sort(rows))


@pytest.mark.parametrize("engine", ["stacked", "vmap"])
def test_engine_matches_autograd_and_torch_adam(cache, engine):
    """Either engine (hand-written, or vmap over the one Head) against one Head trained plainly by autograd
    and torch.optim.Adam with the engine's random streams and ReduceLROnPlateau."""
    data = _data(cache, folds=1)
    cfg = HeadConfig(
        hidden=16,
        epochs=2,
        batch_size=8,
        lr=3e-3,
        weight_decay=1e-3,
        dropout=0.3,
        class_weight="balanced",
        plateau_patience=0,
    )
    mean, std = fold_statistics(data.features, [data.folds[0][0]], data.train_views())
    stack = Stack(
        data, [(0, cfg)], final=False, seed=7, precision="fp32", stats=(mean, std), chunk=1, engine=engine
    )
    stack.train()
    got = stack.results(tta=False)[0].state

    train_rows = data.folds[0][0]
    head = Head(data.dim, 16, 0.3, 2)
    head.load_state_dict(init_head(7, 0, data.dim, 16, 2), strict=False)
    head.set_standardization(mean[0], std[0])
    counts = np.bincount(data.labels[train_rows], minlength=2)
    weight = torch.tensor(counts.sum() / (2 * counts), dtype=torch.float32)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=0)
    feats = data.features.float()
    train_losses = []
    for epoch in range(2):
        rows, views = epoch_order(7, 0, epoch, train_rows, data.views)
        steps = -(-len(rows) // 8)
        lanes = dropout_lanes(7, 0, epoch, steps, 8, 16, torch.device("cpu"))
        for s in range(steps):
            r, v = rows[s * 8 : (s + 1) * 8], views[s * 8 : (s + 1) * 8]
            keep = (lanes[s, : len(r)] >= dropout_threshold(0.3)).float() / 0.7
            h = torch.relu(head.fc1(head.standardize(feats[r, v]))) * keep
            loss = F.cross_entropy(head.fc2(h), torch.as_tensor(data.labels[r]), weight=weight)
            train_losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            val = data.folds[0][1]
            val_loss = F.cross_entropy(
                head.eval()(feats[val, 0]), torch.as_tensor(data.labels[val]), weight=weight
            )
            head.train()
        assert stack.heads[0].lr_history[epoch] == pytest.approx(opt.param_groups[0]["lr"])
        assert stack.heads[0].val_history[epoch] == pytest.approx(float(val_loss), rel=1e-5)
        assert stack.heads[0].history["train_loss"][epoch] == pytest.approx(np.mean(train_losses), rel=1e-5)
        train_losses.clear()
        sched.step(float(val_loss))
    for name, ref in head.state_dict().items():
        torch.testing.assert_close(got[name], ref, atol=2e-5, rtol=1e-4, msg=name)
    assert stack.heads[0].lr == pytest.approx(opt.param_groups[0]["lr"])


def test_plateau_matches_torch():
    losses = [1.0, 0.9, 0.9, 0.95, 0.9, 0.8999, 0.91, 0.92, 0.93, 0.5, 0.6, 0.7, 0.8]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    lr, best, bad = 1.0, float("inf"), 0
    for loss in losses:
        sched.step(loss)
        lr, best, bad = plateau_update(loss, lr, best, bad, 0.5, 1)
        assert lr == opt.param_groups[0]["lr"]


def test_dropout_lanes_are_uniform_and_depend_only_on_their_key():
    cpu = torch.device("cpu")
    a = dropout_lanes(0, 1, 2, 40, 16, 64, cpu)
    assert torch.equal(a[:10], dropout_lanes(0, 1, 2, 10, 16, 64, cpu))
    assert not torch.equal(a, dropout_lanes(0, 2, 2, 40, 16, 64, cpu))
    assert not torch.equal(a, dropout_lanes(0, 1, 3, 40, 16, 64, cpu))
    for p in (0.0, 0.3, 0.5):
        keep = (a >= dropout_threshold(p)).float()
        assert keep.mean().item() == pytest.approx(1 - p, abs=0.01)
        assert keep.mean((0, 1)).std().item() < 0.05
    u = a.float().flatten()
    assert abs(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1].item()) < 0.02


def test_stack_of_one_equals_head_inside_a_stack(cache):
    """Same masks, same batches, same init: a head alone and inside a mixed stack end bit-identical."""
    data = _data(cache, folds=2)
    mean, std = fold_statistics(data.features, [f[0] for f in data.folds], data.train_views())
    target = HeadConfig(hidden=16, epochs=2, batch_size=8, lr=2e-3, dropout=0.5)
    others = [
        HeadConfig(hidden=16, epochs=3, batch_size=8, lr=1e-2, dropout=0.2, patience=1),
        HeadConfig(hidden=16, epochs=1, batch_size=8, lr=5e-4, dropout=0.0, weight_decay=0.1),
    ]
    alone = Stack(data, [(0, target)], final=False, seed=3, precision="fp32", stats=(mean, std), chunk=1)
    mixed = Stack(
        data,
        [(0, others[0]), (1, target), (2, others[1])],
        final=False,
        seed=3,
        precision="fp32",
        stats=(mean, std),
        chunk=6,
    )
    alone.train()
    mixed.train()
    a = [r for r in alone.results(False)]
    m = [r for r in mixed.results(False) if r.config == 1]
    for ra, rm in zip(a, m, strict=True):
        for name in ra.state:
            assert torch.equal(ra.state[name], rm.state[name]), name
        assert ra.val_loss_history == rm.val_loss_history


def _run(cache: Path, out: Path, **kw):
    kw = {**FAST, **kw}
    config = HeadConfig(**{k: v for k, v in kw.items() if k in HEAD_FIELDS})
    return train_head(
        cache, out, config, TrainOptions(**{k: v for k, v in kw.items() if k not in HEAD_FIELDS})
    )


def test_train_head_outputs(cache, tmp_path):
    out = tmp_path / "run"
    result = _run(cache, out, tta=True, patience=2)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["folds.csv", "head.pt", "metrics.json", "predictions.csv", "report"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["format"] == "fastall-run" and m["precision"] in ("bf16", "fp32")
    assert len(m["folds"]) == 5 and m["summary"]["peak_fold"] in range(5)
    assert {"final", "ensemble", "final_tta", "ensemble_tta"} <= set(m["test"])
    assert all(r["shared_patients"] == 0 for r in m["splits"]["audit"])
    assert result.summary["accuracy"] == m["summary"]["accuracy"]
    blob = torch.load(out / "head.pt", weights_only=True)
    assert blob["format"] == "fastall-head" and blob["format_version"] == 1
    assert blob["cache_key"] == read_cache(cache, load_features=False).key
    assert len(blob["fold_state_dicts"]) == 5
    head = Head(**blob["head_config"])
    head.load_state_dict(blob["state_dict"])
    assert head_from_state_dict(blob["fold_state_dicts"][0]).hidden == 32
    with open(out / "folds.csv") as fh:
        folds = list(csv.DictReader(fh))
    assert {r["fold"] for r in folds} == {"0", "1", "2", "3", "4", "test"}
    with open(out / "predictions.csv") as fh:
        preds = list(csv.DictReader(fh))
    c = read_cache(cache, load_features=False)
    assert len(preds) == (c.labels >= 0).sum()
    val = [p for p in preds if p["split"] == "val"]
    fold_of = {r["patient"]: r["fold"] for r in folds}
    assert all(fold_of[p["patient"]] == p["fold"] for p in val)


def test_identical_runs_give_identical_metrics(cache, tmp_path):
    a = _run(cache, tmp_path / "a", seed=1).metrics
    b = train_head(cache, tmp_path / "b", seed=1, **FAST).metrics  # the flat keywords of earlier versions
    c = _run(cache, tmp_path / "c", seed=2).metrics
    for m in (a, b, c):
        m.pop("timings")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["folds"] != c["folds"]


def test_existing_run_is_refused_unless_overwrite(cache, tmp_path):
    out = tmp_path / "run"
    _run(cache, out, epochs=1)
    with pytest.raises(FastallError, match="--overwrite"):
        _run(cache, out, epochs=1)
    _run(cache, out, epochs=1, overwrite=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FastallError, match="never overwritten"):
        _run(cache, other, epochs=1, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob("*.tmp-*"))


def test_failure_during_training_leaves_no_folder(cache, tmp_path, monkeypatch):
    import fastall.training.run_outputs as run_outputs

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_outputs, "write_run_predictions", boom)
    with pytest.raises(KeyboardInterrupt):
        _run(cache, tmp_path / "run", epochs=1)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_in_a_subprocess_leaves_nothing_that_looks_complete(tmp_path):
    big = make_feature_cache(tmp_path / "big.h5", patients=(10, 10), images_per_patient=20, dim=64, views=2)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastall",
            "train-head",
            str(big),
            "--out",
            str(out),
            "--preset",
            "paper",
            "--epochs",
            "10000",
            "--hidden",
            "32",
            "--device",
            "cpu",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(8)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert b"interrupted; no run folder was written" in err and b"Traceback" not in err
    assert not out.exists()
    assert not list(tmp_path.glob("run.*"))


def test_standardize_learns_large_scale_features_that_raw_features_do_not(tmp_path):
    """Random-init ResNet-50 scale (mean 21, std 20): unstandardised Adam steps move every pre-activation by
    lr * 21 * D, units die and the head learns poorly; training-fold standardisation fixes it."""
    big = make_feature_cache(
        tmp_path / "rn.h5",
        patients=(10, 10),
        images_per_patient=12,
        dim=1024,
        views=2,
        loc=21.0,
        scale=20.0,
        separation=0.6,
    )
    options = TrainOptions(test="none", progress=False, device="cpu")
    on = train_head(big, tmp_path / "on", HeadConfig(hidden=64, epochs=6, lr=1e-3, standardize=True), options)
    off = train_head(
        big, tmp_path / "off", HeadConfig(hidden=64, epochs=6, lr=1e-3, standardize=False), options
    )
    assert on.summary["accuracy"] > 0.9
    assert on.summary["accuracy"] > off.summary["accuracy"] + 0.05
    assert on.summary["log_loss"] < off.summary["log_loss"]
    blob = torch.load(on.out / "head.pt", weights_only=True)
    assert 15 < blob["state_dict"]["mean"].mean() < 27 and 10 < blob["state_dict"]["std"].mean() < 30
    blob = torch.load(off.out / "head.pt", weights_only=True)
    assert blob["state_dict"]["mean"].abs().max() == 0 and (blob["state_dict"]["std"] == 1).all()


def test_cli_train_head_and_refusals(cache, tmp_path):
    runner = CliRunner()
    out = tmp_path / "r"
    res = runner.invoke(
        cli,
        [
            "train-head",
            str(cache),
            "--folds",
            "3",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--hidden",
            "16",
            "--seed",
            "0",
            "--device",
            "cpu",
            "--no-tta",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "metrics.json").is_file()
    res = runner.invoke(cli, ["train-head", str(cache), "--out", str(out)])
    assert res.exit_code == 1 and "--overwrite" in res.output and "Traceback" not in res.output
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    res = runner.invoke(cli, ["train-head", str(bad), "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and str(bad) in res.output
    res = runner.invoke(cli, ["train-head", str(cache), "--out", str(tmp_path / "y"), "--folds", "9"])
    assert res.exit_code == 1 and "use --folds" in res.output


def test_cpu_worker_threads_change_nothing(cache, tmp_path):
    """Heads trained on worker threads (one intra-op thread each) equal heads trained inline."""
    inline = _run(cache, tmp_path / "a", seed=4).metrics
    torch.set_num_threads(2)
    pooled = _run(cache, tmp_path / "b", seed=4).metrics
    for m in (inline, pooled):
        m.pop("timings")
    assert json.dumps(inline, sort_keys=True) == json.dumps(pooled, sort_keys=True)


@pytest.mark.parametrize("test", ["prelim", "none"])
def test_test_modes_and_unlabelled_rows(tmp_path, test):
    c = make_feature_cache(
        tmp_path / "c.h5",
        patients=(6, 6),
        images_per_patient=8,
        dim=16,
        views=2,
        prelim_patients=2,
        testing_images=5,
    )
    result = _run(c, tmp_path / "run", test=test, epochs=1)
    cache = read_cache(c, load_features=False)
    with open(result.out / "predictions.csv") as fh:
        preds = list(csv.DictReader(fh))
    if test == "none":
        assert result.test is None and {p["split"] for p in preds} == {"val"}
        assert len(preds) == (cache.labels >= 0).sum()
    else:
        assert result.test["images"] == (cache.sources == "prelim").sum() == 32
    assert "unknown" not in {p["patient"] for p in preds}
