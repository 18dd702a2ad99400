"""The HTML report: made by train-head and sweep (atomically, inside the run folder), remade by `fastall
report` from the run folder alone, self-contained, checked in headless Chromium; bad inputs leave out only
what they must."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastall.cli import cli

BROWSER_MISSING = "headless Chromium (apt-get install chromium) and websocket-client are needed"


def _invoke(*args: str, ok: bool = True):
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    """A synthetic C-NMC tree (12 patients), its cache, a 3-fold train-head run (with its report)."""
    from fastall.data.synth import synthesize
    from fastall.features.extract import extract

    base = tmp_path_factory.mktemp("report")
    synthesize(base / "data", patients_per_class=6, images_per_patient=4, size=48, seed=3, prelim=False)
    extract(base / "data", base / "cache.h5", views=2, image_size=32, weights="none", device="cpu",
            amp=False, workers=0,)  # fmt: skip
    out = _invoke("train-head", str(base / "cache.h5"), "--out", str(base / "run"), "--folds", "3",
                  "--epochs", "3", "--device", "cpu").output  # fmt: skip
    return {"base": base, "data": base / "data", "cache": base / "cache.h5", "run": base / "run", "out": out}


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_train_head_writes_the_report_and_prints_its_path(pipeline):
    run = pipeline["run"]
    page = run / "report" / "index.html"
    assert page.is_file()
    assert f"Report: {page}" in pipeline["out"].replace("\n", "")
    figures = {p.name for p in (run / "report" / "figures").iterdir()}
    for name in ("roc", "pr", "confusion", "calibration", "curves"):
        assert {f"{name}.png", f"{name}.svg"} <= figures
    assert {"cells_correct.png", "cells_errors.png"} <= figures
    assert not list(run.parent.glob("run.tmp-*")) and not list(run.glob("report.*-*"))


def test_metrics_json_has_clinical_metrics_with_patient_bootstrap_cis(pipeline):
    m = _metrics(pipeline["run"])
    assert m["command"].startswith("python ") or m["command"].startswith("fastall train-head")
    assert m["cache"]["data_root"] == str(pipeline["data"].resolve())
    pooled = m["pooled"]
    assert pooled["n"] == m["splits"]["pool_images"]
    for key in ("balanced_accuracy", "specificity", "npv", "mcc", "f1_weighted", "brier", "pr_auc"):
        assert key in pooled and key in m["folds"][0] and key in m["summary"]
    ci = pooled["ci"]
    assert ci["resamples"] == 1000 and ci["patients"] == 12 - m["splits"]["test_patients"]
    if ci["reliable"]:
        lo, hi = ci["intervals"]["accuracy"]
        assert lo <= pooled["accuracy"] <= hi
    assert m["test"]["final"]["ci"]["reliable"] is False  # 1-2 test patients: no number
    assert "Clinical metrics" in pipeline["out"] and "unreliable" in pipeline["out"]


def test_page_is_self_contained_and_holds_the_tables(pipeline):
    html = (pipeline["run"] / "report" / "index.html").read_text()
    m = _metrics(pipeline["run"])
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "<script" not in html and "@import" not in html and "url(" not in html
    srcs = re.findall(r"<img src=\"([^\"]+)\"", html)
    assert len(srcs) == 7 and all(s.startswith("data:image/png;base64,") for s in srcs)
    summary = html[html.index('id="summary-table"') :]
    summary = summary[: summary.index("</table>")]
    assert f"{100 * m['summary']['accuracy']:.2f}" in summary
    for text in (m["command"].split()[0], m["cache"]["key"], m["cache"]["key_params"]["weights_sha256"],
                 m["cache"]["key_params"]["dataset_fingerprint"], "Leakage audit", "Table II", "Table III",
                 "How to read this", "linear probe (to beat)"):  # fmt: skip
        assert text in html, text
    header = html[html.index('<div class="sub">') :].split("</div>")[0]
    assert f"{pipeline['run'].absolute()} · report made" in header and "Shown(" not in html


def test_the_report_opens_in_headless_chromium(pipeline):
    """No console errors, no network request, every image decoded, the summary's mean accuracy."""
    from browser import chromium, load

    if chromium() is None or _missing("websocket"):
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {BROWSER_MISSING}")
        pytest.skip(BROWSER_MISSING)
    page = pipeline["run"] / "report" / "index.html"
    probe = """(() => ({
        images: [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]),
        summary: document.querySelector('#summary-table').innerText,
        title: document.title,
    }))()"""
    result = load(page, probe)
    assert result.errors == []
    local = all(u.startswith(("file://", "data:")) for u in result.requests)
    assert result.requests and local, result.requests
    assert [u for u in result.requests if u.startswith("file://")] == [page.absolute().as_uri()]
    images = result.value["images"]
    assert len(images) == 7 and all(done and w > 0 and h > 0 for done, w, h in images), images
    mean = _metrics(pipeline["run"])["summary"]["accuracy"]
    assert f"{100 * mean:.2f}" in result.value["summary"]


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def test_report_remakes_from_the_run_folder_alone(pipeline, tmp_path):
    """A copy of the run, its cache gone: the page and figures come back the same way."""
    run = tmp_path / "copy"
    shutil.copytree(pipeline["run"], run)
    shutil.rmtree(run / "report")
    out = _invoke("report", str(run)).output
    assert (run / "report" / "index.html").is_file() and "7 figures" in out
    assert "no per-epoch history" not in out


def test_moved_images_need_data_and_wrong_images_are_refused(pipeline, tmp_path):
    from fastall.data.synth import synthesize

    run = tmp_path / "run"
    shutil.copytree(pipeline["run"], run)
    metrics = _metrics(run)
    metrics["cache"]["data_root"] = str(tmp_path / "gone")
    (run / "metrics.json").write_text(json.dumps(metrics))
    out = _invoke("report", str(run)).output
    assert "grids left out" in out and "--data" in out and "5 figures" in out
    assert not (run / "report" / "figures" / "cells_correct.png").exists()
    moved = tmp_path / "moved"
    shutil.copytree(pipeline["data"], moved)
    _invoke("report", str(run), "--data", str(moved))
    assert (run / "report" / "figures" / "cells_correct.png").exists()
    # same names, other pixels (another size): the dataset fingerprint differs
    synthesize(tmp_path / "resized", patients_per_class=6, images_per_patient=4, size=40, seed=3, prelim=0)
    bad = _invoke("report", str(run), "--data", str(tmp_path / "resized"), ok=False)
    assert bad.exit_code == 1 and "fingerprint" in bad.output
    # other images altogether: the recorded paths are not there
    synthesize(tmp_path / "other", patients_per_class=2, images_per_patient=2, size=40, seed=9, prelim=False)
    bad = _invoke("report", str(run), "--data", str(tmp_path / "other"), ok=False)
    assert bad.exit_code == 1 and "are not there" in bad.output
    assert (run / "report" / "figures" / "cells_correct.png").exists()  # the old report is kept


def test_without_metrics_json_the_figures_are_still_made(pipeline, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pipeline["run"], run)
    (run / "metrics.json").unlink()
    out = _invoke("report", str(run)).output
    assert "metrics.json is missing" in out
    names = {p.stem for p in (run / "report" / "figures").glob("*.png")}
    assert {"roc", "pr", "confusion", "calibration"} <= names  # grids need the recorded data root


def test_training_curves_from_the_history_contract(pipeline, tmp_path):
    """metrics.json "history" (per fold and final: losses, accuracy, lr; 1-based best epoch) -> Fig. 1."""
    from fastall.reporting.figures import curves_figure

    history = {
        "folds": [
            {"fold": f, "best_epoch": 2, "epochs_run": 3, "train_loss": [0.9, 0.6, 0.5],
             "val_loss": [1.0, 0.7, 0.8], "val_accuracy": [0.6, 0.8, 0.75], "lr": [1e-4, 1e-4, 1e-5]}
            for f in range(3)
        ],
        "final": {"fold": -1, "best_epoch": 2, "epochs_run": 2, "train_loss": [0.9, 0.6], "val_loss": [],
                  "val_accuracy": [], "lr": [1e-4, 1e-4]},
    }  # fmt: skip
    fig = curves_figure(history)
    loss, acc, lr = fig.axes
    assert len(acc.get_lines()) == 3 + 3  # a curve and a kept-epoch marker per fold
    assert any(list(line.get_xdata()) == [2, 2] for line in loss.get_lines())
    run = tmp_path / "run"
    shutil.copytree(pipeline["run"], run)
    m = _metrics(run)
    m["history"] = history
    (run / "metrics.json").write_text(json.dumps(m))
    out = _invoke("report", str(run)).output
    assert "history" not in out and (run / "report" / "figures" / "curves.svg").is_file()
    assert 'id="fig-curves"' in (run / "report" / "index.html").read_text()


def test_no_report_flag_and_report_failure_leaves_no_run(pipeline, tmp_path, monkeypatch):
    _invoke("train-head", str(pipeline["cache"]), "--out", str(tmp_path / "plain"), "--folds", "2",
            "--epochs", "1", "--device", "cpu", "--no-report")  # fmt: skip
    assert (tmp_path / "plain" / "metrics.json").is_file() and not (tmp_path / "plain" / "report").exists()
    import fastall.reporting.figures as figures

    def broken(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(figures, "save", broken)
    bad = _invoke("train-head", str(pipeline["cache"]), "--out", str(tmp_path / "full"), "--folds", "2",
                  "--epochs", "1", "--device", "cpu", ok=False)  # fmt: skip
    assert bad.exit_code == 1 and "No space left" in bad.output
    assert not (tmp_path / "full").exists() and not list(tmp_path.glob("full.*"))


def test_sweep_writes_a_ranked_report_with_a_heatmap(pipeline, tmp_path):
    out = _invoke("sweep", str(pipeline["cache"]), "--out", str(tmp_path / "sweep"), "--folds", "2",
                  "--grid", "lr=1e-4,1e-3 dropout=0.3,0.5 epochs=1", "--device", "cpu").output  # fmt: skip
    folder = tmp_path / "sweep" / "report"
    assert f"Report: {folder / 'index.html'}" in out.replace("\n", "")
    assert {"sweep_rank.png", "sweep_heatmap.png", "sweep_heatmap.svg"} <= {p.name for p in folder.rglob("*")}
    html = (folder / "index.html").read_text()
    assert "fastall train-head" in html and html.count("<img") == 2
    assert f"{(tmp_path / 'sweep').absolute()} · report made" in html and "Shown(" not in html


def test_more_than_two_classes_gets_the_figures_that_apply(tmp_path):
    """A predictions.csv of three classes (no metrics.json): confusion matrices; ROC/PR/calibration are
    two-class figures and are left out with a note."""
    import csv

    import numpy as np

    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    with open(run / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "patient", "label", "split", "fold", "prediction", "probability"])
        for i in range(60):
            label, pred = names[i % 3], names[int(rng.integers(3))]
            w.writerow([f"x/{i}.png", f"p{i % 12}", label, "val", i % 2, pred, f"{rng.uniform(0.34, 1):.3f}"])
    out = _invoke("report", str(run)).output
    assert "3 classes" in out and "1 figure;" in out
    assert (run / "report" / "figures" / "confusion.svg").is_file()
