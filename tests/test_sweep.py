"""sweep: grid parsing, sampling, outputs, and equivalence with train-head (same engine, same folds)."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from featcache import make_feature_cache

from fastall.cli import cli
from fastall.errors import FastallError
from fastall.training.config import HeadConfig, TrainOptions
from fastall.training.sweep import Range, expand, parse_grid, sample, sweep
from fastall.training.train_head import train_head

GRID = "lr=3e-4,1e-3,3e-3 dropout=0.3,0.5 weight_decay=0,1e-4"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_feature_cache(
        tmp_path_factory.mktemp("s") / "c.h5", patients=(8, 10), images_per_patient=10, dim=32, views=3
    )


def test_parse_and_expand_the_issue_grid():
    text = "lr=1e-4,3e-4,1e-3 dropout=0.3,0.5 hidden=256,512,1024 epochs=5,10 weight_decay=0,1e-4"
    grid = parse_grid(text)
    assert grid["hidden"] == [256, 512, 1024] and grid["weight_decay"] == [0.0, 1e-4]
    configs = expand(grid)
    assert len(configs) == 72 and len(set(configs)) == 72
    g = parse_grid("batch-size=16,32 patience=none,2 class_weight=none,balanced standardize=true,false")
    assert g == {
        "batch_size": [16, 32],
        "patience": [None, 2],
        "class_weight": ["none", "balanced"],
        "standardize": [True, False],
    }


@pytest.mark.parametrize(
    "text, token",
    [
        ("lr", "lr"),
        ("lr=", "lr="),
        ("lrr=1e-4", "lrr=1e-4"),
        ("lr=abc", "lr=abc"),
        ("hidden=1.5", "hidden=1.5"),
        ("dropout=1.5", "dropout=1.5"),
        ("lr=1e-4 lr=1e-3", "lr=1e-3"),
        ("lr=1e-5:1e-2", "lr=1e-5:1e-2"),
        ("class_weight=some", "class_weight=some"),
        ("standardize=maybe", "standardize=maybe"),
        ("=3", "=3"),
        ("epochs=0", "epochs=0"),
        ("lr=-1", "lr=-1"),
    ],
)
def test_malformed_grid_names_the_bad_token(text, token):
    with pytest.raises(FastallError) as err:
        parse_grid(text)
    message = str(err.value)
    assert "\n" not in message and repr(token) in message


def test_random_sampling_is_seeded_and_within_ranges():
    grid = parse_grid("lr=1e-5:1e-2 dropout=0.1:0.6 hidden=64,128 epochs=2:4", allow_ranges=True)
    assert grid["lr"] == Range(1e-5, 1e-2)
    a, b, c = sample(grid, 30, 0), sample(grid, 30, 0), sample(grid, 30, 1)
    assert a == b and a != c
    assert all(1e-5 <= x.lr <= 1e-2 and 0.1 <= x.dropout <= 0.6 for x in a)
    assert all(x.hidden in (64, 128) and 2 <= x.epochs <= 4 for x in a)
    assert sum(x.lr < 3e-4 for x in a) > 5
    with pytest.raises(FastallError, match="takes a list"):
        parse_grid("class_weight=a:b", allow_ranges=True)


def test_sweep_equals_train_head_per_fold(cache, tmp_path):
    """A configuration inside a 12-configuration sweep and the same configuration trained alone (fp32)."""
    options = TrainOptions(folds=4, precision="fp32", progress=False, device="cpu", seed=5)
    res = sweep(cache, tmp_path / "sweep", grid=GRID, options=options)
    assert len(res.results["configs"]) == 12
    target = next(
        c
        for c in res.results["configs"]
        if c["params"]["lr"] == 1e-3 and c["params"]["dropout"] == 0.5 and c["params"]["weight_decay"] == 1e-4
    )
    p = target["params"]
    alone = train_head(cache, tmp_path / "alone", HeadConfig(**p), options)
    swept = sorted(target["folds"], key=lambda f: f["fold"])
    assert len(swept) == len(alone.folds) == 4
    for s, a in zip(swept, alone.folds, strict=True):
        assert abs(s["val_loss"] - a["val_loss"]) <= 1e-6
        assert s["accuracy"] == a["accuracy"] and s["best_epoch"] == a["best_epoch"]


def test_sweep_outputs_and_best_command_reproduces_the_best(cache, tmp_path):
    options = TrainOptions(folds=3, progress=False, device="cpu")
    res = sweep(cache, tmp_path / "sw", grid="lr=1e-3,3e-3 hidden=16,32 patience=1,none", options=options)
    out = tmp_path / "sw"
    assert sorted(p.name for p in out.iterdir()) == ["report", "results.csv", "results.json"]
    data = json.loads((out / "results.json").read_text())
    assert data["format"] == "fastall-sweep" and data["varying"] == ["lr", "hidden", "patience"]
    scores = [c["summary"]["auc"] for c in data["configs"]]
    assert scores == sorted(scores, reverse=True)
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 * 3
    argv = shlex.split(res.best["command"])
    assert argv[:2] == ["fastall", "train-head"]
    argv[argv.index("--out") + 1] = str(tmp_path / "best")
    result = CliRunner().invoke(cli, argv[1:])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "best" / "metrics.json").read_text())
    best = sorted(res.best["folds"], key=lambda f: f["fold"])
    assert [f["val_loss"] for f in run["folds"]] == pytest.approx([f["val_loss"] for f in best], abs=1e-6)
    with pytest.raises(FastallError, match="--overwrite"):
        sweep(cache, out, grid="lr=1e-3", options=options)


def test_cli_sweep_prints_table_and_command(cache, tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "sweep",
            str(cache),
            "--grid",
            "lr=1e-3,3e-3 dropout=0.3,0.5",
            "--folds",
            "3",
            "--metric",
            "accuracy",
            "--out",
            str(tmp_path / "s"),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "ranked by accuracy" in res.output and "fastall train-head" in res.output
    res = runner.invoke(
        cli, ["sweep", str(cache), "--grid", "lr=1e-3 drop=0.5", "--out", str(tmp_path / "t")]
    )
    assert res.exit_code == 1 and "'drop=0.5'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "t").exists()
    res = runner.invoke(
        cli,
        [
            "sweep",
            str(cache),
            "--random",
            "3",
            "--grid",
            "lr=1e-4:1e-2 hidden=16",
            "--folds",
            "3",
            "--out",
            str(tmp_path / "r"),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(json.loads((tmp_path / "r" / "results.json").read_text())["configs"]) == 3


def test_default_head_config_is_the_papers():
    c = HeadConfig()
    assert (c.lr, c.batch_size, c.epochs, c.dropout, c.hidden) == (1e-4, 32, 5, 0.5, 512)
