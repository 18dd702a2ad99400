"""Hardening round 3 (issue 28): outputs that would replace runs, hostile cache names, compare's content
check, the out-of-sample shift radius, non-UTF-8 file names and the one seed rule."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastall.cli import cli
from fastall.errors import FastallError
from tests.bad_inputs import Env
from tests.bad_inputs_round3 import _other_pixels_cache
from tests.e2e_helpers import E2ERun, cache_with
from tests.test_hardening import build_env


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return build_env(tmp_path_factory.mktemp("round3"))


def _run(argv: list[str]):
    result = CliRunner(env={"COLUMNS": "400"}).invoke(cli, [str(a) for a in argv])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def _error(result) -> str:
    assert result.exit_code != 0, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_evaluate_overwrite_never_replaces_the_run_it_evaluates(env, tmp_path):
    victim = tmp_path / "victim"
    shutil.copytree(env.run, victim)
    before = sorted(p.name for p in victim.iterdir())
    error = _error(_run(["evaluate", victim, env.data, "--out", victim, "--overwrite", "--no-report"]))
    assert "fastall-run" in error and "not a fastall-evaluation" in error
    assert sorted(p.name for p in victim.iterdir()) == before


def test_evaluate_overwrite_replaces_its_own_output(env, tmp_path):
    out = tmp_path / "ev"
    assert _run(["evaluate", env.run, env.data, "--out", out, "--no-report"]).exit_code == 0
    assert "--overwrite" in _error(_run(["evaluate", env.run, env.data, "--out", out, "--no-report"]))
    again = _run(["evaluate", env.run, env.data, "--out", out, "--overwrite", "--no-report"])
    assert again.exit_code == 0, again.output
    assert (out / "evaluation.json").is_file()


@pytest.mark.parametrize("command", ["predict", "export"])
def test_output_file_inside_a_run_is_refused(env, tmp_path, command):
    victim = tmp_path / "victim"
    shutil.copytree(env.run, victim)
    head = (victim / "head.pt").read_bytes()
    argv = ["predict", victim, env.data, "--out", victim / "head.pt"]
    if command == "export":
        argv = ["export", victim, "--out", victim / "head.pt", "--precision", "fp32"]
    assert "inside the fastall-run folder" in _error(_run(argv))
    assert (victim / "head.pt").read_bytes() == head


def test_predict_never_replaces_a_cache(env, tmp_path):
    cache = tmp_path / "cache.h5"
    shutil.copy(env.cache, cache)
    error = _error(_run(["predict", env.run, env.data, "--out", cache]))
    assert "HDF5" in error
    assert cache.read_bytes() == env.cache.read_bytes()


def test_explain_onto_its_run_is_refused_before_the_work(env, tmp_path, monkeypatch):
    import fastall.inference.explain as explain

    def no_work(*args, **kwargs):
        raise AssertionError("explain started the work")

    monkeypatch.setattr(explain, "find_images", no_work)
    victim = tmp_path / "victim"
    shutil.copytree(env.run, victim)
    error = _error(_run(["explain", victim, env.data, "--out", victim, "--overwrite"]))
    assert "not a fastall-explain" in error
    assert (victim / "head.pt").is_file()


@pytest.mark.parametrize("hostile", ["/tmp/fastall-hostile-x", "../../fastall-hostile-y"])
def test_a_hostile_backbone_name_never_leaves_out(env, tmp_path, hostile):
    from fastall.system.names import safe_token

    cache = cache_with(E2ERun(env.run, env.cache, env.data), tmp_path / "hostile.h5", backbone=hostile)
    out = tmp_path / "deep" / "er" / "cmp"
    result = _run(
        ["compare", env.cache, cache, "--out", out, "--folds", "2", "--test", "none", "--epochs", "1"]
    )
    assert result.exit_code == 0, result.output
    assert not Path(hostile).exists() and not (out / hostile).resolve().exists()
    assert (
        not (tmp_path / "fastall-hostile-y").exists()
        and not (tmp_path / "deep" / "fastall-hostile-y").exists()
    )
    token = safe_token(hostile)
    assert "/" not in token and ".." not in token
    assert (out / "runs" / token / "head.pt").is_file()


def test_safe_token_keeps_plain_names_and_separates_others():
    from fastall.system.names import safe_token

    assert safe_token("resnet50") == "resnet50"
    assert safe_token("vit_small.dinov2-lvd142m") == "vit_small.dinov2-lvd142m"
    tokens = {safe_token(n) for n in ["..", ".", "/", "a/b", "a_b", "a\\b", "", "x" * 300, "é"]}
    assert len(tokens) == 9
    assert all(t and "/" not in t and "\\" not in t and ".." not in t and len(t) <= 80 for t in tokens)


def test_compare_refuses_same_names_with_other_pixels(env, tmp_path):
    from fastall.features.cache import read_cache
    from fastall.training.rank_backbones import check_same_dataset

    fc = read_cache(env.cache)
    other = _other_pixels_cache(Env(env.data, env.cache, env.run, tmp_path))
    with pytest.raises(
        FastallError, match=r"content fingerprint.*1 image\(s\) differ, e\.g\. " + fc.paths[3]
    ):
        check_same_dataset([fc, read_cache(other)])


def test_the_shift_radius_holds_one_percent_of_fresh_in_distribution_features():
    """At C-NMC size (10,000 x 2,048), about 1% of fresh same-distribution samples fall outside. The Gaussian
    has a decaying spectrum (variance 1/i), like backbone features: there the in-sample percentile left 100%
    of fresh samples outside (benchmarks/results/shift_radius_cpu.json)."""
    from fastall.inference.shift import Radius

    rng = np.random.default_rng(7)
    scale = (1.0 / np.sqrt(np.arange(1, 2049))).astype(np.float32)
    radius = Radius(rng.standard_normal((10_000, 2048), dtype=np.float32) * scale)
    outside = radius.outside(rng.standard_normal((5_000, 2048), dtype=np.float32) * scale).mean()
    assert 0.005 <= outside <= 0.02, outside


def test_the_shift_radius_splits_by_patient():
    from fastall.inference.shift import Radius

    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(40), 10).astype(str)
    radius = Radius(rng.standard_normal((400, 8)), patients)
    assert radius.fit_images % 10 == 0 and radius.fit_images + radius.calibration_images == 400
    assert radius.outside(rng.standard_normal((2000, 8))).mean() < 0.03


def _latin1_file(folder: Path, data: bytes) -> bytes:
    name = os.fsencode(folder) + b"/caf\xe9.bmp"
    with open(name, "wb") as fh:
        fh.write(data)
    return name


def test_predict_reports_a_non_utf8_name_before_the_work(env, tmp_path):
    from fastall.data.synth import _bmp_bytes
    from tests.bad_inputs import _cell

    images = tmp_path / "imgs"
    images.mkdir()
    (images / "ok.bmp").write_bytes(_bmp_bytes(_cell()))
    _latin1_file(images, _bmp_bytes(_cell()))
    result = _run(["predict", env.run, images, "--out", tmp_path / "p.csv"])
    assert result.exit_code == 0, result.output
    assert "caf\\xe9.bmp" in result.output and "not valid UTF-8" in result.output
    assert "caf\\xe9.bmp" in (tmp_path / "p.skipped.csv").read_text()
    strict = _run(["predict", env.run, images, "--out", tmp_path / "q.csv", "--no-skip-bad"])
    assert "not valid UTF-8" in _error(strict)


def test_extract_leaves_a_non_utf8_name_out_and_writes_the_cache(env, tmp_path):
    from fastall.data.synth import TREE, _bmp_bytes
    from tests.bad_inputs import _cell

    data = tmp_path / "data"
    shutil.copytree(env.data, data)
    _latin1_file(next((data / TREE).glob("training_data/fold_0/all")), _bmp_bytes(_cell()))
    out = tmp_path / "c.h5"
    result = _run(["extract", data, "--out", out, "--weights", "none", "--image-size", "32", "--views", "1"])
    assert result.exit_code == 0, result.output
    assert "not valid UTF-8" in result.output
    assert out.is_file()


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999"])
@pytest.mark.parametrize("command", ["train-head", "sweep", "compare", "synth", "extract"])
def test_one_seed_rule(env, tmp_path, command, seed):
    argv = {
        "train-head": ["train-head", env.cache, "--out", tmp_path / "r"],
        "sweep": ["sweep", env.cache, "--out", tmp_path / "s", "--grid", "lr=1e-4"],
        "compare": ["compare", env.cache, env.cache, "--out", tmp_path / "c"],
        "synth": ["synth", tmp_path / "d"],
        "extract": ["extract", env.data, "--out", tmp_path / "c.h5", "--weights", "none"],
    }[command]
    assert f"--seed must be in 0..2**63-1, got {seed}" in _error(_run([*argv, "--seed", seed]))


FORMULAS = ['=HYPERLINK("http://x","y")', "@SUM(1+1)"]


def test_formula_class_names_are_neutralised_in_every_csv_and_read_back(env, tmp_path):
    import csv

    import h5py

    from fastall.system import csvsafe

    cache = tmp_path / "formula.h5"
    shutil.copy(env.cache, cache)
    with h5py.File(cache, "r+") as f:
        del f["class_names"]
        f.create_dataset("class_names", data=FORMULAS, dtype=h5py.string_dtype())
    run = tmp_path / "run"
    result = _run(["train-head", cache, "--out", run, "--folds", "2", "--test", "none", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    for name in ("predictions.csv", "folds.csv"):
        with open(run / name, newline="") as fh:
            raw = [cell for row in csv.reader(fh) for cell in row]
        assert not any(cell.startswith(("=", "@", "+", "-")) and not _number(cell) for cell in raw), name
        with open(run / name, newline="") as fh:
            values = {v for row in csvsafe.dict_reader(fh) for v in row.values()}
        assert set(FORMULAS) <= values, name
    assert csvsafe.uncell(csvsafe.cell("'=x")) == "'=x" and csvsafe.cell("-0.25") == "-0.25"


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_sweep_random_too_many_is_refused_up_front(env, tmp_path):
    error = _error(
        _run(["sweep", env.cache, "--out", tmp_path / "s", "--random", "100000000", "--folds", "2"])
    )
    assert "--random: 100,000,000 configuration(s)" in error and "GiB" in error and "use at most" in error
    assert "at least 1 configuration" in _error(
        _run(["sweep", env.cache, "--out", tmp_path / "t", "--random", "0"])
    )


def test_tune_grid_too_large_is_refused_before_it_is_made(env, tmp_path):
    values = ",".join(str(v) for v in range(1, 101))
    grid = f"epochs={values} hidden={values} batch_size={values} dropout=0.1,0.2,0.3,0.4,0.5"
    argv = ["train-head", env.cache, "--out", tmp_path / "r", "--selection", "inner", "--tune", grid]
    assert "--tune: 5,000,000 configuration(s)" in _error(_run(argv))


def test_bench_threads_are_bounded_by_the_usable_cores():
    error = _error(_run(["bench", "--threads", "100000", "--images", "1", "--iters", "1"]))
    assert "--threads 100000" in error and "core" in error


def test_evaluate_refuses_another_datasets_cache(env, tmp_path):
    other = _other_pixels_cache(Env(env.data, env.cache, env.run, tmp_path))
    error = _error(_run(["evaluate", env.run, env.data, "--out", tmp_path / "ev", "--cache", other]))
    assert "does not match the run" in error and "content_fingerprint" in error


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda b: b["state_dict"]["fc1.weight"].view(-1)[:3].fill_(float("nan")), "non-finite"),
        (lambda b: b["state_dict"]["fc2.bias"].fill_(float("inf")), "non-finite"),
        (lambda b: b["state_dict"]["std"].zero_(), "'std' has"),
        (lambda b: b["head_config"].update(dropout=float("nan")), "dropout nan"),
        (lambda b: b["state_dict"].update(mean="zero"), "'mean' is a str"),
    ],
)
def test_a_broken_head_is_refused_where_it_is_loaded(env, tmp_path, edit, fragment):
    import torch

    run = tmp_path / "run"
    shutil.copytree(env.run, run)
    blob = torch.load(run / "head.pt", weights_only=True)
    edit(blob)
    torch.save(blob, run / "head.pt")
    assert fragment in _error(_run(["predict", run, env.data, "--out", tmp_path / "p.csv"]))
    assert fragment in _error(_run(["export", run, "--out", tmp_path / "m.pt", "--precision", "fp32"]))


def test_sigterm_to_extract_ends_with_one_line(env, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "c.h5"
    cmd = [sys.executable, "-m", "fastall", "extract", str(env.data), "--out", str(out), "--weights", "none"]
    cmd += ["--views", "40", "--image-size", "224", "--device", "cpu", "--workers", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    time.sleep(10)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert b"stopped by SIGTERM" in err and b"partial" in err and b"Traceback" not in err
    assert not out.exists()


def test_a_throughput_ratio_above_one_is_marked_as_noise():
    from fastall.inference.timing import ratio_text

    row = {"end_to_end_vs_model_only": 1.15, "model_only_spread": 0.3, "model_only_batches": 4}
    assert "within noise" in ratio_text({**row, "ratio_within_noise": True})
    assert ratio_text({**row, "end_to_end_vs_model_only": 0.5, "ratio_within_noise": False}) == "0.50"


def test_predict_on_a_full_disk_leaves_neither_file(env, tmp_path):
    from tests.bad_inputs_round3 import _latin1_predict

    argv = _latin1_predict(Env(env.data, env.cache, env.run, tmp_path))
    result = CliRunner(env={"FASTALL_TEST_ENOSPC_AT": "text"}).invoke(cli, argv)
    assert result.exit_code != 0 and "no space left on device" in result.output
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p.skipped.csv").exists()
