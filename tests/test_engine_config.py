"""One declaration per hyperparameter (CLI options, sweep grid, train-head command), the device and precision
resolver, plain data for JSON, and the summary's NaN policy."""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fastall.cli.training import head_options, preset_config, sweep_cmd, train_head_cmd
from fastall.errors import FastallError
from fastall.system import machine
from fastall.system.devices import resolve_device, resolve_precision
from fastall.system.jsonable import plain
from fastall.system.settings import hparam, hparams_of
from fastall.training.config import HeadConfig, TrainOptions, split_keywords
from fastall.training.grid import parse_grid
from fastall.training.metrics import summarize
from fastall.training.presets import PRESETS
from fastall.training.sweep import train_head_command

# The train-head flags of every earlier version and their defaults, which are now the paper preset's.
FLAGS = {
    "--lr": 1e-4,
    "--weight-decay": 0.0,
    "--dropout": 0.5,
    "--hidden": 512,
    "--epochs": 5,
    "--batch-size": 32,
    "--patience": None,
    "--plateau-factor": 0.1,
    "--plateau-patience": 2,
    "--class-weight": "none",
    "--standardize": True,
}


def test_train_head_options_are_the_head_config_fields():
    options = {o.opts[0]: o for o in train_head_cmd.params if isinstance(o, click.Option)}
    for p in HeadConfig.hparams():
        option = options[p.flag]
        assert option.name == p.name and option.default is None and option.help.startswith(p.help)
        assert p.default == getattr(PRESETS["paper"].config, p.name)
    assert {flag: getattr(PRESETS["paper"].config, options[flag].name) for flag in FLAGS} == FLAGS
    assert options["--standardize"].secondary_opts == ["--no-standardize"]
    assert list(options["--class-weight"].type.choices) == ["none", "balanced"]
    grid = next(o for o in sweep_cmd.params if o.name == "grid")
    assert all(p.name in grid.help for p in HeadConfig.hparams())


def test_a_new_hyperparameter_is_one_declaration():
    @dataclass(frozen=True)
    class WithMomentum:
        lr: float = hparam(1e-4, "Adam learning rate.", check=lambda v: v > 0, rule="must be > 0")
        momentum: float | None = hparam(
            None, "Momentum.", check=lambda v: 0 <= v < 1, rule="must be in [0, 1)"
        )

    (momentum,) = [p for p in hparams_of(WithMomentum) if p.name == "momentum"]
    assert momentum.flag == "--momentum" and momentum.kind is float and momentum.optional
    assert momentum.parse("0.9") == 0.9 and momentum.parse("none") is None
    assert momentum.problem(1.5) == "momentum 1.5 must be in [0, 1)" and momentum.problem(None) is None
    assert momentum.argv(0.9) == ["--momentum", "0.9"] and momentum.argv(None) == []
    seen = {}

    @click.command()
    def cmd(**kwargs):
        seen.update(kwargs)

    for option in reversed(head_options(WithMomentum)):
        cmd = option(cmd)
    result = CliRunner().invoke(cmd, ["--momentum", "0.5"])
    assert result.exit_code == 0, result.output
    assert seen == {"lr": None, "momentum": 0.5}  # unset: the preset's value


def test_the_printed_command_parses_back_to_the_same_config():
    cfg = HeadConfig(
        lr=3e-3, weight_decay=1e-5, hidden=64, patience=3, class_weight="balanced", standardize=False
    )
    for c in (cfg, HeadConfig()):
        argv = shlex.split(train_head_command(Path("c.h5"), c, TrainOptions(folds=4, seed=2, device="cpu")))
        ctx = train_head_cmd.make_context("train-head", argv[2:])
        with ctx:
            config, protocol = preset_config(ctx.params["preset"], dict(ctx.params))
        assert config == c and protocol["selection"] == "fold" and protocol["train_views"] == "augmented"
        assert (ctx.params["folds"], ctx.params["seed"], ctx.params["device"]) == (4, 2, "cpu")


def test_grid_types_come_from_the_fields():
    grid = parse_grid("hidden=64 patience=none,2 standardize=off plateau-factor=0.5")
    assert grid == {"hidden": [64], "patience": [None, 2], "standardize": [False], "plateau_factor": [0.5]}
    with pytest.raises(FastallError, match="'patience=none:3'"):
        parse_grid("patience=none:3", allow_ranges=True)


def test_flat_keywords_still_split_into_config_and_options():
    config, options = split_keywords(None, None, {"lr": 3e-3, "folds": 3, "device": "cpu"})
    assert config == HeadConfig(lr=3e-3) and (options.folds, options.device) == (3, "cpu")
    with pytest.raises(TypeError, match="'learning_rate'"):
        split_keywords(None, None, {"learning_rate": 1.0})


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))
    assert resolve_device("auto").type in ("cpu", "cuda")
    for bad in ("gpu", "cuda:x", "cuda:", "tpu:0"):
        with pytest.raises(FastallError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1"):
            with pytest.raises(FastallError, match="no CUDA device"):
                resolve_device(name)


def test_auto_precision_on_this_cpu():
    """Training resolves through the one resolver: bf16 where this CPU computes it natively, else fp32."""
    native = machine.cpu_capability().native_bf16
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(FastallError, match="expected auto, fp32 or bf16"):
        resolve_precision("fp16", torch.device("cpu"))


def test_plain_is_json_and_weights_only_safe(tmp_path):
    value = {
        1: (np.float32(0.5), np.int64(3), np.bool_(True)),
        "nan": math.nan,
        "inf": np.float64(np.inf),
        "path": Path("a/b"),
        "array": np.arange(3),
        "none": None,
    }
    out = plain(value)
    assert out == {
        "1": [0.5, 3, True],
        "nan": None,
        "inf": None,
        "path": "a/b",
        "array": [0, 1, 2],
        "none": None,
    }
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    torch.save(out, tmp_path / "blob.pt")
    assert torch.load(tmp_path / "blob.pt", weights_only=True) == out


def test_the_std_over_one_fold_is_undefined():
    one = summarize([{"accuracy": 0.9, "auc": math.nan}])
    assert one["accuracy"] == 0.9 and math.isnan(one["accuracy_std"])
    assert math.isnan(one["auc"]) and math.isnan(one["auc_std"])
    assert plain(one)["accuracy_std"] is None
    two = summarize([{"val_loss": 0.5}, {"val_loss": 0.7}], names=("val_loss",))
    assert two["val_loss_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
