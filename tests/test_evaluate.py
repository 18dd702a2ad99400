"""`fastall evaluate`: external validation, thresholds from out-of-fold predictions only, domain shift,
patient-level diagnosis (and train-head's patient_level)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

from fastall.cli import cli
from fastall.errors import FastallError
from fastall.inference.evaluate import evaluate_run, map_labels, parse_classes
from fastall.inference.shift import domain_shift
from fastall.inference.threshold import choose_threshold
from fastall.reporting.tables import print_run
from fastall.training.patients import SAME_AS_CELLS, patient_level, proportion


def _synth(out: Path, *args: str) -> Path:
    result = CliRunner().invoke(
        cli,
        ["synth", str(out), "--size", "48", "--patients-per-class", "3", "--images-per-patient", "3", *args],
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The acceptance pipeline at tiny scale: A black (trained on), B light (seed 1, never seen)."""
    from fastall.features.extract import extract
    from fastall.training.train_head import train_head

    base = tmp_path_factory.mktemp("evaluate")
    a = _synth(base / "A", "--background", "black")
    _synth(base / "B", "--background", "light", "--seed", "1")
    extract(
        a,
        base / "a.h5",
        views=3,
        image_size=48,
        weights="none",
        device="cpu",
        amp=False,
        workers=0,
    )
    train_head(base / "a.h5", base / "runA", folds=3, test="none", epochs=3, device="cpu", progress=False)
    return base


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _evaluate(*args: str):
    return CliRunner().invoke(cli, ["evaluate", *args])


def test_acceptance_prints_metrics_threshold_source_and_shift(runs):
    out = runs / "evalB"
    result = _evaluate(str(runs / "runA"), str(runs / "B"), "--out", str(out), "--threshold", "youden")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "accuracy" in text and "auc" in text
    assert "source: the run's out-of-fold predictions" in text
    assert "domain shift: mean feature shift" in text and "Mahalanobis" in text
    ev = json.loads((out / "evaluation.json").read_text())
    n = ev["data"]["patients"]
    assert n > 6 and f"patients: {n} patients" in text  # 3 per class + the prelim folder's
    assert ev["format"] == "fastall-evaluation" and ev["threshold"]["rule"] == "youden"
    assert ev["metrics"]["ci"]["patients"] == n and ev["metrics"]["n"] == ev["images"]
    assert ev["patient_level"]["patients"] == n
    assert ev["shift"]["train_images"] > 0 and 0.0 <= ev["shift"]["fraction_outside"] <= 1.0
    assert ev["training_copies"] == {
        "checked": True,
        "root": ev["training_copies"]["root"],
        "copies": 0,
        "examples": [],
    }
    rows = _rows(out / "predictions.csv")
    assert len(rows) == ev["images"] and {"true_class", "predicted_class", "p_hem", "p_all"} <= set(rows[0])
    assert len(_rows(out / "patients.csv")) == n
    assert (out / "report" / "index.html").read_text().count("data:image/png;base64,") == 3


def _generic(runs: Path, dest: Path, swap: bool = False) -> Path:
    """B's training images as a generic tree (``p<patient>_<n>.bmp``), class folders swapped if asked."""
    for p in sorted((runs / "B" / "C-NMC_Leukemia" / "training_data").glob("fold_*/*/*.bmp")):
        name = {"all": "hem", "hem": "all"}[p.parent.name] if swap else p.parent.name
        (dest / name).mkdir(parents=True, exist_ok=True)
        patient, n = p.name.split("_")[1:3]
        shutil.copy(p, dest / name / f"p{patient}_{n}.bmp")
    return dest


def test_threshold_comes_from_oof_predictions_alone(runs, tmp_path):
    """Swapping every DATA label leaves the threshold as it was; the metrics do change."""
    regex = ["--patient-regex", r"^(p[^_]+)_"]
    for name, swap in (("G", False), ("F", True)):
        result = _evaluate(
            str(runs / "runA"),
            str(_generic(runs, tmp_path / name, swap)),
            "--out",
            str(tmp_path / f"e{name}"),
            "--threshold",
            "sens=0.95",
            "--no-report",
            *regex,
        )
        assert result.exit_code == 0, result.output
    one, two = (json.loads((tmp_path / f"e{n}" / "evaluation.json").read_text()) for n in "GF")
    assert one["threshold"] == two["threshold"] and one["threshold"]["rule"] == "sens=0.95"
    one_l, two_l = (
        {Path(r["path"]).name: r["true_class"] for r in _rows(tmp_path / f"e{n}" / "predictions.csv")}
        for n in "GF"
    )
    assert one_l.keys() == two_l.keys() and all(one_l[k] != two_l[k] for k in one_l)
    assert one["patient_level"]["patients"] == 6
    chosen = choose_threshold("sens=0.95", runs / "runA", ["hem", "all"], "all")
    assert chosen == one["threshold"] and chosen["oof_sensitivity"] >= 0.95
    rows = [r for r in _rows(runs / "runA" / "predictions.csv") if r["split"] == "val"]
    pos = [float(r["p_all"]) for r in rows if r["true_class"] == "all"]
    assert np.mean(np.array(pos) >= chosen["value"]) >= 0.95


def test_unknown_class_refused_unless_mapped(runs, tmp_path):
    data = _generic(runs, tmp_path / "G")
    (data / "all").rename(data / "blast")
    (data / "hem").rename(data / "normal")
    result = _evaluate(str(runs / "runA"), str(data), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert "DATA class 'blast' is not a class of the run (its classes: hem, all)" in result.output
    ev = evaluate_run(runs / "runA", data, tmp_path / "o", classes="blast=all,normal=hem", report=False)
    pl = ev.result["patient_level"]
    assert pl["patients"] == ev.result["images"] and SAME_AS_CELLS in pl["notes"]  # no patient rule


def test_one_class_data_gets_per_class_figures(runs, tmp_path):
    data = tmp_path / "only"
    shutil.copytree(runs / "B" / "C-NMC_Leukemia" / "training_data" / "fold_0" / "hem", data / "hem")
    ev = evaluate_run(runs / "runA", data, tmp_path / "o")
    assert ev.result["metrics"]["auc"] is None or np.isnan(ev.result["metrics"]["auc"])
    assert list(ev.result["per_class_recall"]) == ["hem"]
    assert any("AUC is undefined" in n for n in ev.result["notes"])
    assert ev.result["patient_level"]["mean_probability"]["sensitivity"]["n"] == 0
    page = (tmp_path / "o" / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # confusion matrix and histogram; no ROC of one class
    assert "Confusion matrix" in page and "Predicted probabilities" in page and "ROC curve" not in page
    accuracy = ev.result["metrics"]["accuracy"]
    assert f"<td>accuracy</td><td>{accuracy:.3f}</td>" in "".join(page.split())


def test_training_images_are_named_as_copies(runs, tmp_path):
    ev = evaluate_run(runs / "runA", runs / "A", tmp_path / "o", report=False)
    n = ev.result["images"]
    assert ev.result["training_copies"]["copies"] == n
    assert any(f"{n} DATA image(s) have the same file contents" in w for w in ev.warnings)


def test_shift_summary_flags_far_data_only():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 8))
    near = domain_shift(train, rng.normal(size=(200, 8)))
    far = domain_shift(train, rng.normal(loc=3.0, size=(200, 8)))
    assert not near["large"] and near["fraction_outside"] < 0.05
    assert far["large"] and far["fraction_outside"] > 0.9 and far["mean_shift"] > 2.5


def test_patient_level_metrics_and_exact_ci():
    patients = np.array(["a", "a", "b", "b", "c", "c", "d"])
    truth = np.array([1, 1, 1, 1, 0, 0, 0])
    score = np.array([0.9, 0.7, 0.4, 0.45, 0.2, 0.6, 0.1])
    pl, rows = patient_level(truth, score, patients)
    assert pl["patients"] == 4 and [r["cells"] for r in rows] == [2, 2, 2, 1]
    m = pl["mean_probability"]
    assert m["sensitivity"]["k"] == 1 and m["sensitivity"]["n"] == 2
    assert m["specificity"]["value"] == 1.0 and m["auc"] == 1.0
    assert pl["fraction_called"]["sensitivity"]["value"] == 0.5  # b: 0 of 2 cells called ALL
    low, high = proportion(1, 2)["ci"]
    assert low == pytest.approx(0.0126, abs=1e-4) and high == pytest.approx(0.9874, abs=1e-4)
    assert proportion(0, 0)["ci"] is None


def test_class_mapping_parsing():
    assert parse_classes("blast=all, normal=hem") == {"blast": "all", "normal": "hem"}
    with pytest.raises(FastallError, match="DATA=RUN"):
        parse_classes("blast")
    with pytest.raises(FastallError, match="not a class of the run"):
        map_labels([], ["hem", "all"], {"x": "tumour"})


def test_train_head_records_patient_level(runs):
    m = json.loads((runs / "runA" / "metrics.json").read_text())
    oof = m["patient_level"]["out_of_fold"]
    assert oof["patients"] > 6 and oof["mean_probability"]["accuracy"]["ci"] is not None
    out = io.StringIO()
    print_run(m, runs / "runA", Console(file=out, width=300))
    assert f"patient level (out of fold): {oof['patients']} patients" in out.getvalue()


def test_class_mapping_is_exact_and_refuses_doubles_and_unknown_classes():
    from fastall.data.records import Record

    records = [Record(Path(f"{c}/{i}.bmp"), f"{c}/{i}.bmp", 0, c, f"p{i}", c) for i, c in enumerate("aAb")]
    with pytest.raises(FastallError, match="DATA class 'A' is not a class of the run"):
        map_labels(records, ["a", "b"], {})
    assert list(map_labels(records, ["a", "A", "b"], {})) == [0, 1, 2]
    assert list(map_labels(records, ["x", "y"], {"a": "x", "A": "y", "b": "y"})) == [0, 1, 1]
    with pytest.raises(FastallError, match="not a class of the run"):
        map_labels(records, ["a", "b"], {"A": "B"})
    with pytest.raises(FastallError, match="'ghost', not a class of DATA"):
        map_labels(records, ["a", "A", "b"], {"ghost": "a"})
    with pytest.raises(FastallError, match="'a' is mapped twice"):
        parse_classes("a=x,b=y,a=y")
