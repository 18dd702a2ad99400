"""Patient-level bootstrap CIs: the vectorised intervals equal a plain loop over resampled patients with
each metric from its definition (sklearn, counts); patients, not images, are resampled; seeded; unreliable
below 10."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from fastall.training.metrics import classification_metrics
from fastall.training.uncertainty import (
    CI_METRICS,
    bootstrap_intervals,
    metrics_with_ci,
    resample_patients,
)


def _case(patients: int, k: int, seed: int, ties: bool = True):
    """Images of ``patients`` patients (2 to 15 each, one class per patient, like C-NMC), noisy
    probabilities; rounded so that tied scores occur within and across patients."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 16, patients)
    ids = np.repeat([f"p{i}" for i in range(patients)], sizes)
    label_of = rng.integers(0, k, patients)
    label_of[:k] = np.arange(k)
    y = np.repeat(label_of, sizes)
    logits = rng.standard_normal((y.size, k)) + 1.2 * np.eye(k)[y]
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if ties:
        prob = np.round(prob, 1)
        prob[:, 0] = 1 - prob[:, 1:].sum(1)
        prob = np.clip(prob, 0, 1)
    return y, prob, ids


def _draws(n_patients: int, resamples: int, seed: int) -> np.ndarray:
    """The test's own patient draws (with replacement), patched into the code under test."""
    return np.random.default_rng(1000 + seed).choice(n_patients, size=(resamples, n_patients), replace=True)


def _metrics(y: np.ndarray, prob: np.ndarray, k: int) -> dict:
    """Each of CI_METRICS from its definition: sklearn for the standard ones, counts for specificity and NPV,
    the Brier score written out; class 1 positive when binary."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's notes on resamples that lack a class
        return _metrics_quietly(y, prob, k)


def _metrics_quietly(y: np.ndarray, prob: np.ndarray, k: int) -> dict:
    pred = prob.argmax(1)
    labels = list(range(k))
    out = {"accuracy": skm.accuracy_score(y, pred), "balanced_accuracy": skm.balanced_accuracy_score(y, pred)}
    avg = {"average": "binary", "pos_label": 1} if k == 2 else {"average": "macro", "labels": labels}
    out["recall"] = skm.recall_score(y, pred, zero_division=np.nan, **avg)
    out["precision"] = skm.precision_score(y, pred, zero_division=np.nan, **avg)
    out["f1"] = skm.f1_score(y, pred, zero_division=np.nan, **avg)
    out["f1_weighted"] = skm.f1_score(y, pred, labels=labels, average="weighted", zero_division=0)
    out["mcc"] = skm.matthews_corrcoef(y, pred)
    onehot = np.eye(k)[y]
    if k == 2:
        tn, fn = np.sum((pred == 0) & (y == 0)), np.sum((pred == 0) & (y == 1))
        fp = np.sum((pred == 1) & (y == 0))
        out["specificity"] = tn / (tn + fp) if tn + fp else np.nan
        out["npv"] = tn / (tn + fn) if tn + fn else np.nan
        out["brier"] = np.mean((prob[:, 1] - y) ** 2)
    else:
        out["specificity"] = out["npv"] = np.nan
        out["brier"] = np.mean(np.sum((prob - onehot) ** 2, 1))
    if np.unique(y).size < 2:
        out["auc"] = out["pr_auc"] = np.nan
    elif k == 2:
        out["auc"] = skm.roc_auc_score(y, prob[:, 1])
        out["pr_auc"] = skm.average_precision_score(y, prob[:, 1])
    else:
        present = [c for c in labels if onehot[:, c].any()]
        # one-vs-rest macro AUC is defined only with every class present (sklearn raises otherwise)
        every = len(present) == k
        out["auc"] = (
            np.mean([skm.roc_auc_score(onehot[:, c], prob[:, c]) for c in labels]) if every else np.nan
        )
        out["pr_auc"] = np.mean([skm.average_precision_score(onehot[:, c], prob[:, c]) for c in present])
    return out


def _reference(y, prob, ids, k, resamples, seed, level=0.95):
    """The slow definition: for each resample, concatenate the images of the drawn patients (sorted by name),
    compute each metric from its definition, take the percentiles of the finite values."""
    uniq = sorted(set(ids.tolist()))
    rows = {p: [i for i, q in enumerate(ids) if q == p] for p in uniq}
    prob = prob / prob.sum(1, keepdims=True)
    values = {name: [] for name in CI_METRICS}
    for draw in _draws(len(uniq), resamples, seed):
        idx = [i for d in draw for i in rows[uniq[d]]]
        m = _metrics(y[idx], prob[idx], k)
        for name in CI_METRICS:
            values[name].append(m[name])
    tail = 100 * (1 - level) / 2
    out = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=float)
        v = v[np.isfinite(v)]
        out[name] = list(np.percentile(v, [tail, 100 - tail])) if v.size else None
    return out


@pytest.mark.parametrize(("patients", "k", "seed"), [(12, 2, 0), (14, 2, 1), (11, 3, 2)])
def test_intervals_equal_a_plain_loop_over_resampled_patients(patients, k, seed, monkeypatch):
    from fastall.training import uncertainty

    monkeypatch.setattr(uncertainty, "resample_patients", _draws)
    y, prob, ids = _case(patients, k, seed)
    fast = bootstrap_intervals(y, prob, ids, classes=k, resamples=150, seed=seed)
    slow = _reference(y, prob, ids, k, 150, seed)
    assert fast["reliable"] and fast["patients"] == patients
    for name in CI_METRICS:
        if slow[name] is None:
            assert fast["intervals"][name] is None, name
        else:
            assert fast["intervals"][name] == pytest.approx(slow[name], abs=1e-9), name
    if k == 2:
        assert fast["intervals"]["auc"][0] < fast["intervals"]["auc"][1]
    else:
        assert slow["specificity"] is None and slow["brier"] is not None


def test_patient_draws_are_seeded_uniform_and_with_replacement():
    draws = resample_patients(20, 2000, seed=3)
    assert draws.shape == (2000, 20) and draws.min() == 0 and draws.max() == 19
    assert np.array_equal(draws, resample_patients(20, 2000, seed=3))
    assert not np.array_equal(draws, resample_patients(20, 2000, seed=4))
    counts = np.bincount(draws.ravel(), minlength=20)
    assert np.abs(counts / 2000 - 1).max() < 0.1  # each patient drawn once per resample on average
    repeats = np.mean([np.unique(row).size < 20 for row in draws])
    assert repeats > 0.99  # with replacement: a permutation in each row would be a bug


def test_binary_auc_and_average_precision_of_weighted_resamples_match_sklearn():
    """The ranking metrics of one resample, as weights, against sklearn with sample_weight."""
    from fastall.training.uncertainty import resampled_metrics

    y, prob, ids = _case(13, 2, 7)
    _, codes = np.unique(ids, return_inverse=True)
    counts = np.bincount(resample_patients(13, 1, 3)[0], minlength=13).astype(float)
    got = resampled_metrics(counts[None], y, prob, codes, 2)
    w = counts[codes]
    assert got["auc"][0] == pytest.approx(skm.roc_auc_score(y, prob[:, 1], sample_weight=w), abs=1e-12)
    assert got["pr_auc"][0] == pytest.approx(
        skm.average_precision_score(y, prob[:, 1], sample_weight=w), abs=1e-12
    )


def test_patients_not_images_are_resampled():
    """One patient with many images all wrong: image resampling would give a narrow interval around the
    pooled accuracy; patient resampling must swing with whether that patient is drawn."""
    y = np.r_[np.ones(200, int), np.tile([0, 1], 20)]
    prob = np.zeros((y.size, 2))
    prob[np.arange(y.size), 1 - y] = 1.0  # wrong...
    prob[200:, :] = np.eye(2)[y[200:]]  # ...only for the big patient
    ids = np.r_[np.repeat("big", 200), np.repeat([f"s{i}" for i in range(20)], 2)]
    ci = bootstrap_intervals(y, prob, ids, resamples=300, seed=0)["intervals"]["accuracy"]
    assert ci[1] == pytest.approx(1.0)  # resamples without the big patient exist
    assert ci[0] < 0.3


def test_seeded_and_deterministic():
    y, prob, ids = _case(12, 2, 4)
    a = bootstrap_intervals(y, prob, ids, seed=5)
    assert a == bootstrap_intervals(y, prob, ids, seed=5)
    assert a["resamples"] == 1000
    assert a != bootstrap_intervals(y, prob, ids, seed=6)


def test_fewer_than_ten_patients_is_unreliable_not_a_number():
    y, prob, ids = _case(9, 2, 0)
    m = metrics_with_ci(y, prob, ids, 2)
    assert m["ci"]["reliable"] is False and m["ci"]["intervals"] is None
    assert "unreliable" in m["ci"]["note"] and "9 patients" in m["ci"]["note"]
    assert m["accuracy"] == classification_metrics(y, prob, 2)["accuracy"]
