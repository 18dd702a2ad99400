"""The bad-input corpus through the real CLI: one line naming the file, the right exit, no traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from fastall.cli import cli
from tests.bad_inputs import CASES, Env, case_id


def build_env(base) -> Env:
    from fastall.data.synth import synthesize
    from fastall.features.extract import extract
    from fastall.training.config import HeadConfig, TrainOptions
    from fastall.training.train_head import train_head

    synthesize(base / "data", patients_per_class=3, images_per_patient=3, size=48, seed=1)
    extract(
        base / "data",
        base / "cache.h5",
        views=2,
        image_size=32,
        weights="none",
        device="cpu",
        amp=False,
        workers=0,
    )
    options = TrainOptions(folds=2, test="none", device="cpu", progress=False)
    train_head(base / "cache.h5", base / "run", HeadConfig(epochs=2), options)
    return Env(data=base / "data", cache=base / "cache.h5", run=base / "run", tmp=base)


@pytest.fixture(scope="module")
def env_base(tmp_path_factory):
    return build_env(tmp_path_factory.mktemp("hardening"))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bad_input(case, env_base, tmp_path):
    env = Env(env_base.data, env_base.cache, env_base.run, tmp_path)
    result = CliRunner(env={"COLUMNS": "400", **dict(case.env)}).invoke(cli, case.build(env))
    output = result.output
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if case.expect == "ok":
        assert result.exit_code == 0, output
        return
    if case.expect == "reported":
        assert all(f in output for f in case.fragments), output
        return
    assert result.exit_code != 0, output
    error = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, output
    assert all(f in error[0] for f in case.fragments), error[0]
