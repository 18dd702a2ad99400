"""`fastall demo` end to end at a small scale: random-init backbone, patient-level CV accuracy >= 0.9."""

from __future__ import annotations

import json

from click.testing import CliRunner

from fastall.cli import cli
from fastall.demo import finished_line, run_demo


def test_demo_learns_on_synthetic_data_with_random_weights(tmp_path, monkeypatch):
    from fastall.system.events import collecting

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-empty"))
    reporter, events = collecting()
    demo = run_demo(
        tmp_path / "demo",
        patients_per_class=6,
        images_per_patient=6,
        image_side=96,
        input_size=64,
        views=2,
        reporter=reporter,
    )
    report = demo.run / "report" / "index.html"
    assert report.is_file() and demo.result.report.path == report.absolute()
    stages = [e.text.split(":")[0] for e in events if e.kind == "info" and e.code == "stage"]
    assert stages == ["1/3 synth", "2/3 extract", "3/3 train-head"]
    assert "random_backbone" in [w["code"] for w in reporter.warnings]
    assert finished_line(demo).startswith("demo finished in ")
    assert demo.weights == "none"
    metrics = json.loads((demo.run / "metrics.json").read_text())
    assert metrics["summary"]["accuracy"] >= 0.9
    assert len(metrics["folds"]) == 5
    assert {"head.pt", "metrics.json", "folds.csv", "predictions.csv"} <= {p.name for p in demo.run.iterdir()}


def test_rerun_reuses_the_data_and_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-empty"))
    kwargs = dict(patients_per_class=5, images_per_patient=4, image_side=48, input_size=32, views=2)
    from fastall.system.events import collecting

    first = run_demo(tmp_path / "demo", **kwargs)
    cache_mtime = first.cache.stat().st_mtime_ns
    reporter, events = collecting()
    second = run_demo(tmp_path / "demo", reporter=reporter, **kwargs)
    assert second.cache.stat().st_mtime_ns == cache_mtime
    lines = [e.text for e in events if e.kind == "info"]
    assert any("already complete with these settings" in line for line in lines), lines
    assert "1/3 synth: reusing the synthetic tree" in " ".join(lines)


def test_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in [
        "scan",
        "synth",
        "extract",
        "train-head",
        "sweep",
        "verify",
        "bench",
        "predict",
        "export",
        "demo",
        "report",
    ]:
        assert name in result.output
