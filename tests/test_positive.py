"""Issue 22: the positive (disease) class is declared, recorded and named everywhere, whichever folder sorts
first; a class set with no known disease name gets no one-sided metric unless --positive names one."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastall.cli import cli
from fastall.data.positive import is_disease_name, resolve_positive
from fastall.errors import FastallError


def _invoke(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize(
    ("names", "requested", "want"),
    [
        (["blast", "normal"], None, "blast"),
        (["ALL_cells", "benign"], None, "ALL_cells"),
        (["hem", "all"], None, "all"),
        (["malignant", "non-malignant"], None, "malignant"),
        (["leukaemic", "healthy"], None, "leukaemic"),
        (["class0", "class1"], None, None),
        (["blast", "aml"], None, None),
        (["class0", "class1"], "class0", "class0"),
        (["blast", "normal"], "normal", "normal"),
    ],
)
def test_the_rule_names_the_disease_class_or_none(names, requested, want):
    chosen = resolve_positive(names, requested)
    assert chosen.name == want
    assert chosen.index == (names.index(want) if want else None)
    if want is None:
        assert "--positive" in chosen.message


def test_bad_positive_requests_are_one_line_errors():
    with pytest.raises(FastallError, match="case-sensitive: did you mean 'Blast'"):
        resolve_positive(["Blast", "normal"], "blast")
    with pytest.raises(FastallError, match="exactly two classes"):
        resolve_positive(["a", "b", "c"], "a")
    assert resolve_positive(["a", "b", "c"]).source == "multi-class"
    assert not is_disease_name("normal") and not is_disease_name("non-blast")


def _tree(base: Path, names: tuple[str, str], seed: int = 3, patients: int = 6) -> Path:
    """A generic tree whose second synthetic class (the disease-like one) is ``names[0]``: it sorts first."""
    _invoke("synth", base / "gen", "--layout", "generic", "--patients-per-class", patients,
            "--images-per-patient", 4, "--size", 48, "--seed", seed)  # fmt: skip
    root = base / "data"
    shutil.copytree(base / "gen" / "class1", root / names[0])
    shutil.copytree(base / "gen" / "class0", root / names[1])
    return root


def _extract(root: Path, out: Path, *extra: str) -> Path:
    _invoke("extract", root, "--out", out, "--views", 2, "--weights", "none", "--image-size", 32,
            "--device", "cpu", "--patient-regex", r"^(P\d+)_", *extra)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def blast_first(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("blast_first")
    root = _tree(base, ("blast", "normal"))
    cache = _extract(root, base / "c.h5")
    run = base / "run"
    out = _invoke("train-head", cache, "--out", run, "--folds", 3, "--device", "cpu").output
    return {"base": base, "root": root, "cache": cache, "run": run, "out": out}


def _recall_from_predictions(run: Path, positive: str) -> float:
    rows = [r for r in _rows(run / "predictions.csv") if r["split"] == "val"]
    pos = [r for r in rows if r["true_class"] == positive]
    return sum(r["predicted_class"] == positive for r in pos) / len(pos)


def test_a_disease_folder_that_sorts_first_is_the_positive_class(blast_first):
    run = blast_first["run"]
    m = json.loads((run / "metrics.json").read_text())
    assert m["classes"]["names"] == ["blast", "normal"]
    assert m["classes"]["positive"]["name"] == "blast" and m["classes"]["positive"]["index"] == 0
    assert m["pooled"]["recall"] == pytest.approx(_recall_from_predictions(run, "blast"))
    rows = [r for r in _rows(run / "predictions.csv") if r["split"] == "val"]
    neg = [r for r in rows if r["true_class"] == "normal"]
    spec = sum(r["predicted_class"] == "normal" for r in neg) / len(neg)
    assert m["pooled"]["specificity"] == pytest.approx(spec)
    assert {"true_class", "predicted_class", "p_blast", "p_normal"} <= set(rows[0])
    out = blast_first["out"]
    assert "positive class: blast" in out and "Sens blast %" in out and "Spec normal %" in out
    assert not re.search(r"\bALL\b", out)
    html = (run / "report" / "index.html").read_text()
    assert "Sensitivity (recall of blast)" in html and "blast (recorded); the other class: normal" in html
    assert "paper Table" not in html and not re.search(r"\bALL\b", html)
    assert m["cache"]["class_names"] == ["blast", "normal"] and m["paper"] is None


def test_an_unknown_class_name_gets_no_one_sided_metric_without_positive(tmp_path):
    root = _tree(tmp_path, ("kind_a", "other"))  # neither name is a disease word
    cache = _extract(root, tmp_path / "c.h5")
    run = tmp_path / "run"
    out = _invoke("train-head", cache, "--out", run, "--folds", 3, "--device", "cpu", "--no-report").output
    m = json.loads((run / "metrics.json").read_text())
    assert m["classes"]["positive"]["name"] is None
    assert "no_positive" in [w["code"] for w in m["warnings"]]
    assert m["pooled"]["specificity"] is None and m["pooled"]["npv"] is None
    assert m["patient_level"] is None
    assert "Macro rec %" in out and "--positive kind_a" in out
    refused = _invoke("evaluate", run, root, "--out", tmp_path / "e", "--threshold", "sens=0.9", ok=False)
    assert refused.exit_code == 1 and "--positive" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    run2 = tmp_path / "run2"
    _invoke("train-head", cache, "--out", run2, "--folds", 3, "--device", "cpu", "--no-report",
            "--positive", "kind_a")  # fmt: skip
    m2 = json.loads((run2 / "metrics.json").read_text())
    assert m2["classes"]["positive"] == {
        "name": "kind_a", "index": 0, "source": "--positive", "message": "positive class 'kind_a'",
    }  # fmt: skip
    assert m2["pooled"]["recall"] == pytest.approx(_recall_from_predictions(run2, "kind_a"))
    assert m2["patient_level"]["out_of_fold"]["positive_class"] == "kind_a"


def test_evaluate_maps_classes_onto_the_runs_positive_class_and_refuses_a_swap(blast_first, tmp_path):
    data = tmp_path / "other"
    shutil.copytree(blast_first["root"] / "blast", data / "leukemic")
    shutil.copytree(blast_first["root"] / "normal", data / "healthy")
    run, regex = blast_first["run"], ["--patient-regex", r"^(P\d+)_"]
    swapped = _invoke("evaluate", run, data, "--out", tmp_path / "bad", "--classes",
                      "leukemic=normal,healthy=blast", *regex, ok=False)  # fmt: skip
    assert swapped.exit_code == 1 and "swap sensitivity and specificity" in swapped.output
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "ev"
    result = _invoke("evaluate", run, data, "--out", out, "--classes", "leukemic=blast,healthy=normal",
                     "--threshold", "sens=0.9", "--no-report", *regex)  # fmt: skip
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["positive_class"] == "blast" and ev["threshold"]["positive_class"] == "blast"
    rows = _rows(out / "predictions.csv")
    pos = [r for r in rows if r["true_class"] == "blast"]
    called = sum(r["predicted_class"] == "blast" for r in pos) / len(pos)
    assert ev["at_threshold"]["recall"] == pytest.approx(called)
    assert "positive class: blast" in result.output and "sensitivity (blast)" in result.output


def test_metrics_against_sklearn_with_the_positive_class_first_and_last():
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        brier_score_loss,
        f1_score,
        matthews_corrcoef,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    from fastall.training.metrics import classification_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0, 1)
    prob = np.column_stack([1 - p1, p1])
    pred = prob.argmax(1)
    for pos in (0, 1):
        m = classification_metrics(y, prob, positive=pos)
        truth = (y == pos).astype(int)
        assert m["recall"] == pytest.approx(recall_score(y, pred, pos_label=pos))
        assert m["precision"] == pytest.approx(precision_score(y, pred, pos_label=pos))
        assert m["f1"] == pytest.approx(f1_score(y, pred, pos_label=pos))
        assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=1 - pos))
        assert m["npv"] == pytest.approx(precision_score(y, pred, pos_label=1 - pos))
        assert m["pr_auc"] == pytest.approx(average_precision_score(truth, prob[:, pos]))
        assert m["auc"] == pytest.approx(roc_auc_score(truth, prob[:, pos]))
        assert m["brier"] == pytest.approx(brier_score_loss(truth, prob[:, pos]))
        assert m["mcc"] == pytest.approx(matthews_corrcoef(y, pred))
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
        assert m["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"))
        tn, fp, fn, tp = np.bincount(2 * truth + (pred == pos), minlength=4)
        assert m["recall"] == pytest.approx(tp / (tp + fn)) and m["specificity"] == pytest.approx(
            tn / (tn + fp)
        )
    none = classification_metrics(y, prob, positive=None)
    assert none["recall"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert np.isnan(none["specificity"]) and np.isnan(none["npv"])


def test_multiclass_metrics_per_class_against_sklearn():
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    from fastall.training.metrics import classification_metrics

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[y]
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(y, prob)
    p, r, f, s = precision_recall_fscore_support(y, prob.argmax(1), labels=[0, 1, 2, 3])
    for c, row in enumerate(m["per_class"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (p[c], r[c], f[c], s[c])
        )
        assert row["auc"] == pytest.approx(roc_auc_score(y == c, prob[:, c]))
    assert m["auc"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr", average="macro"))
    assert m["auc_weighted"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr", average="weighted"))


def test_bootstrap_intervals_follow_the_positive_class():
    from fastall.training.uncertainty import bootstrap_intervals

    rng = np.random.default_rng(2)
    patients = np.repeat(np.arange(20), 5)
    y = np.repeat(rng.integers(0, 2, 20), 5)
    p1 = np.clip(0.35 * y + rng.uniform(0, 0.65, 100), 0, 1)
    prob = np.column_stack([1 - p1, p1])
    first = bootstrap_intervals(1 - y, prob[:, ::-1], patients, positive=0)["intervals"]
    last = bootstrap_intervals(y, prob, patients, positive=1)["intervals"]
    assert first == pytest.approx(last)
    none = bootstrap_intervals(y, prob, patients, positive=None)["intervals"]
    assert (
        none["recall"] is None and none["specificity"] is None and none["auc"] == pytest.approx(last["auc"])
    )
