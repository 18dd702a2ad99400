"""`fastall verify`: passes on a real synthetic run, fails on a swapped head or swapped weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from e2e_helpers import cache_with, copy_run, shared_run

from fastall.cli import cli
from fastall.inference.precision import pick_images
from fastall.inference.verify import verify_run


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    return shared_run(tmp_path_factory)


def _verify(*args: str):
    return CliRunner().invoke(cli, ["verify", *args])


def test_verify_passes_on_a_synthetic_run(e2e):
    result = _verify(str(e2e.run), "--images", "8", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"]
    assert [c["name"] for c in report["checks"]] == ["view 0", "recorded probs", "view 1 augmented"]
    for check in report["checks"]:
        assert check["agreement"] == 1.0 and check["max_dprob"] <= 1e-2 and check["images"] == 8
    assert "half precision" in report["rule"]  # the cache stores float16


def test_verify_faster_precision_verdict_follows_its_rule(e2e):
    """bf16 against fp32 on this machine: whichever way it goes, the check applies the 99.5 % agreement rule,
    the fp32 checks still pass, and the exit code is 0 exactly when every check passed."""
    result = _verify(str(e2e.run), "--images", "8", "--precision", "bf16", "--json")
    report = json.loads(result.output[: result.output.rindex("}") + 1])
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == ["view 0", "recorded probs", "view 1 augmented", "bf16 vs fp32"]
    assert all(checks[name]["passed"] for name in list(checks)[:3])
    bf16 = checks["bf16 vs fp32"]
    assert bf16["images"] == 8 and bf16["min_agreement"] == 0.995
    assert bf16["passed"] == (bf16["agreement"] >= 0.995) == report["passed"]
    assert result.exit_code == (0 if report["passed"] else 1), result.output
    assert ("verify failed: bf16 vs fp32" in result.output) == (not report["passed"])


@pytest.mark.parametrize("agreement", [1.0, 0.75])
def test_verify_table_and_faster_precision(e2e, monkeypatch, agreement):
    """The faster precision's trial pinned (fp32 standing in, its agreement set): the table shows the row, and
    the verdict and exit code follow it."""
    import dataclasses

    import fastall.inference.verify as verify

    real = verify.try_precision

    def pinned(model, pixels, precision, **kwargs):
        fast, trial = real(model, pixels, "fp32", **kwargs)
        return fast, dataclasses.replace(trial, precision=precision, agreement=agreement)

    monkeypatch.setattr(verify, "try_precision", pinned)
    result = _verify(str(e2e.run), "--images", "4", "--precision", "bf16")
    row = next(line for line in result.output.splitlines() if "bf16 vs fp32" in line)
    assert "view 0" in result.output and f"{agreement:.1%}" in row and "99.5%" in row
    if agreement == 1.0:
        assert result.exit_code == 0 and "pass" in row, result.output
    else:
        assert result.exit_code == 1 and "FAIL" in row, result.output
        assert "verify failed: bf16 vs fp32" in result.output and "Traceback" not in result.output


def test_verify_fails_with_a_head_swapped_in_from_another_run(e2e, tmp_path):
    from fastall.training.config import HeadConfig, TrainOptions
    from fastall.training.train_head import train_head

    options = TrainOptions(folds=3, test="none", seed=7, device="cpu", progress=False)
    train_head(e2e.cache, tmp_path / "other", HeadConfig(epochs=3, lr=3e-3), options)
    run = copy_run(e2e, tmp_path / "run")
    shutil.copy(tmp_path / "other" / "head.pt", run / "head.pt")
    result = _verify(str(run), "--images", "8")
    assert result.exit_code == 1, result.output
    assert "verify failed: recorded probs" in result.output and "Traceback" not in result.output


def test_verify_refuses_swapped_weights(e2e, tmp_path):
    from fastall.features.backbone import load_backbone

    other, _ = load_backbone("none", seed=1)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    result = _verify(str(e2e.run), "--weights-path", str(tmp_path / "other.pth"))
    assert result.exit_code == 1
    assert "sha256" in result.output and len(result.output.strip().splitlines()) == 1


def test_verify_fails_numerically_when_weights_lie_about_their_sha(e2e, monkeypatch):
    import fastall.inference.artifacts as artifacts

    real = artifacts.load_backbone

    def impostor(weights, seed=0, **kwargs):
        _, info = real(weights, seed=seed, **kwargs)
        backbone, _ = real(weights, seed=seed + 1, **kwargs)
        return backbone, info

    monkeypatch.setattr(artifacts, "load_backbone", impostor)
    report = verify_run(e2e.run, images=8)
    assert not report.passed
    assert report.checks[0].max_dprob > 1e-2 or report.checks[0].agreement < 1


def test_verify_refuses_a_mismatched_cache(e2e, tmp_path):
    other = cache_with(e2e, tmp_path / "other.h5", image_size=64)
    result = _verify(str(e2e.run), "--cache", str(other))
    assert result.exit_code == 1
    assert "image_size: 32 -> 64" in result.output


def test_verify_needs_the_data_root(e2e, tmp_path):
    moved = cache_with(e2e, tmp_path / "moved.h5")
    import h5py

    with h5py.File(moved, "a") as f:
        f.attrs["data_root"] = str(tmp_path / "gone")
    result = _verify(str(e2e.run), "--cache", str(moved), "--images", "4")
    assert result.exit_code == 1 and "--data" in result.output
    result = _verify(str(e2e.run), "--cache", str(moved), "--images", "4", "--data", str(e2e.data))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("bad", ["missing", "text", "wrong-format"])
def test_verify_refuses_what_is_not_a_run(tmp_path, bad):
    run = tmp_path / "run"
    run.mkdir()
    if bad == "text":
        (run / "head.pt").write_text("not a head")
    elif bad == "wrong-format":
        torch.save({"format": "something-else"}, run / "head.pt")
    result = _verify(str(run))
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1


def test_pick_images_covers_every_class():
    import numpy as np

    labels = np.array([0] * 10 + [1] * 3 + [-1] * 5)
    chosen = pick_images(labels, 8)
    assert set(labels[chosen]) == {0, 1} and (labels[chosen] == 1).sum() == 3


def test_verify_accepts_a_head_file_path(e2e):
    report = verify_run(Path(e2e.run) / "head.pt", images=4)
    assert report.passed


def test_calibration_pick_is_disjoint_from_the_checked_images_and_covers_every_class():
    import numpy as np

    from fastall.inference.precision import calibration_pick

    labels = np.array([0] * 10 + [1] * 6 + [-1] * 4)
    checked = pick_images(labels, 8)
    calib = calibration_pick(labels, checked, 4)
    assert not set(calib) & set(checked) and set(labels[calib]) == {0, 1}
    everything = np.flatnonzero(labels >= 0)
    assert list(calibration_pick(labels, everything, 3)) == list(everything[:3])  # nothing left: checked ones
    assert set(labels[calibration_pick(labels)]) == {0, 1}


def test_one_agreement_rule_decides_export_bench_and_verify(monkeypatch):
    import fastall.inference.precision as precision

    ref = torch.tensor([[2.0, 0.0]] * 199 + [[0.0, 2.0]])
    one_flip = ref.clone()
    one_flip[0] = torch.tensor([0.0, 2.0])
    trial = precision.compare_logits("int8", "jit", ref, one_flip)
    assert trial.agreement == 0.995 and trial.agrees and trial.images == 200
    assert trial.fp32_positive_rate == 0.005 and trial.max_dlogit == 2.0
    two_flips = one_flip.clone()
    two_flips[1] = torch.tensor([0.0, 2.0])
    assert not precision.compare_logits("int8", "jit", ref, two_flips).agrees
    monkeypatch.setattr(precision, "MIN_PRECISION_AGREEMENT", 1.0)
    assert not trial.agrees
