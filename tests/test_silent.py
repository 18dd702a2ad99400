"""The library is silent: train-head, sweep and probe called from Python print nothing, report through a
``fastall.system.events.Reporter`` and return their warnings as records with codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from featcache import make_feature_cache

from fastall.system.events import collecting
from fastall.training.config import HeadConfig, TrainOptions

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_feature_cache(
        tmp_path_factory.mktemp("c") / "c.h5", patients=(6, 6), images_per_patient=6, dim=16, views=2
    )


def test_train_head_prints_nothing_and_returns_its_warnings_as_records(cache, tmp_path, capfd):
    from fastall.training.train_head import train_head

    config = HeadConfig(hidden=8, epochs=2)
    result = train_head(cache, tmp_path / "quiet", config, TrainOptions(folds=2, device="cpu", seed=0))
    assert capfd.readouterr() == ("", "")
    codes = [w["code"] for w in result.warnings]
    assert codes and all(isinstance(c, str) and c for c in codes)
    assert any(c in ("probe_verdict", "head_is_probe") for c in codes)

    reporter, events = collecting()
    again = train_head(
        cache, tmp_path / "heard", config, TrainOptions(folds=2, device="cpu", seed=0), reporter=reporter
    )
    assert capfd.readouterr() == ("", "")
    assert reporter.warnings == again.warnings == result.warnings
    assert [e.code for e in events if e.kind == "warning"] == codes
    tasks = [(e.kind, e.task) for e in events if e.kind in ("start", "end")]
    assert tasks == [("start", "training heads"), ("end", "training heads")]
    advances = [e for e in events if e.kind == "advance"]
    assert advances and advances[-1].done == advances[-1].total


def test_no_progress_means_no_task_events(cache, tmp_path):
    from fastall.training.train_head import train_head

    reporter, events = collecting()
    options = TrainOptions(folds=2, device="cpu", progress=False, report=False, probe=False)
    train_head(cache, tmp_path / "run", HeadConfig(hidden=8, epochs=1), options, reporter=reporter)
    assert {e.kind for e in events} <= {"warning", "info"}


def test_sweep_prints_nothing_and_reports_its_progress(cache, tmp_path, capfd):
    from fastall.training.sweep import sweep

    reporter, events = collecting()
    options = TrainOptions(folds=2, device="cpu", report=False, probe=False)
    result = sweep(cache, tmp_path / "sweep", grid="hidden=4,8 epochs=1", options=options, reporter=reporter)
    assert capfd.readouterr() == ("", "")
    assert len(result.results["configs"]) == 2
    assert [e.code for e in events if e.kind == "info"] == ["estimate"]
    done = [e.done for e in events if e.kind == "advance" and e.task == "sweep"]
    assert done and done[-1] == 2


def test_the_cli_still_draws_the_run(cache, tmp_path):
    from click.testing import CliRunner

    from fastall.cli import cli

    argv = ["train-head", str(cache), "--out", str(tmp_path / "run"), "--folds", "2", "--hidden", "8"]
    result = CliRunner().invoke(cli, [*argv, "--epochs", "1", "--device", "cpu", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "warning(s)" in result.output and "Leakage audit" in result.output
    assert "Warning:" not in result.output  # the warnings once, in the summary (not again as events)
