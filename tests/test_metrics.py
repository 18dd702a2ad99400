"""The paper's metrics agree with sklearn called directly; summaries and JSON safety."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from fastall.system.jsonable import plain
from fastall.training.metrics import classification_metrics, summarize


def _probs(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.standard_normal((n, k)) + 1.5 * np.eye(k)[y]
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_match_sklearn_with_all_as_positive(seed):
    y, p = _probs(200, 2, seed)
    m = classification_metrics(y, p)
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, pos_label=1))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, pos_label=1))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, pos_label=1))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    assert m["confusion"] == skm.confusion_matrix(y, pred).tolist()
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p), rel=1e-6)


def test_multiclass_uses_macro_and_ovr():
    y, p = _probs(300, 3, 5)
    m = classification_metrics(y, p)
    pred = p.argmax(1)
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))


def test_undefined_auc_is_nan_and_null_in_json():
    y = np.ones(10, dtype=int)
    p = np.tile([0.2, 0.8], (10, 1))
    m = classification_metrics(y, p)
    assert math.isnan(m["auc"])
    text = json.dumps(plain(m), allow_nan=False)
    assert json.loads(text)["auc"] is None


def test_summary_mean_std_and_peak():
    folds = [
        {"accuracy": a, "auc": 0.9, "precision": 0.5, "recall": 0.5, "f1": 0.5, "log_loss": 0.1}
        for a in (0.9, 0.95, 0.8)
    ]
    folds[1]["auc"] = math.nan
    s = summarize(folds)
    assert s["accuracy"] == pytest.approx(np.mean([0.9, 0.95, 0.8]))
    assert s["accuracy_std"] == pytest.approx(np.std([0.9, 0.95, 0.8], ddof=1))
    assert s["peak_fold"] == 1 and s["peak_accuracy"] == 0.95
    assert s["auc"] == pytest.approx(0.9)
