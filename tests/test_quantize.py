"""int8 extraction's parts: seeded calibration sample, quality check, CPU requirement, hint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fastall.errors import FastallError
from fastall.features import int8_quality, quantize
from fastall.system.machine import AVX2_EMULATION_ENV, cpu_capability

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks/results/extract_int8_cpu.json"
needs_vnni = pytest.mark.skipif(not cpu_capability().vnni, reason="this CPU has no VNNI")


def emulate_avx2(monkeypatch) -> None:
    """The ISA limits `benchmarks/common.py --emulate avx2` restarts with (read by cpu_capability)."""
    for name, value in AVX2_EMULATION_ENV.items():
        monkeypatch.setenv(name, value)


def test_calibration_sample_is_seeded_and_bounded():
    a = quantize.calibration_indices(1000, seed=0, n=64)
    assert len(a) == 64 and len(set(a.tolist())) == 64 and a.max() < 1000
    assert np.array_equal(a, quantize.calibration_indices(1000, seed=0, n=64))
    assert not np.array_equal(a, quantize.calibration_indices(1000, seed=1, n=64))
    assert sorted(quantize.calibration_indices(10, seed=0, n=64).tolist()) == list(range(10))


def _separable(n: int = 200, d: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    x = rng.normal(size=(n, d)) + 3.0 * labels[:, None] * np.eye(d)[0]
    return x.astype(np.float32), labels, np.array([f"p{i % 10}" for i in range(n)], dtype=object)


def test_quality_passes_close_features_and_reports_figures():
    x, y, g = _separable()
    close = x + 1e-3 * np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    q = int8_quality.check_quality(x, close, y, g, classes=2)
    assert q.passed and q.cosine_p1 > 0.999 and q.probe_held_out == 100
    assert abs(q.probe_accuracy_fp32 - q.probe_accuracy_int8) <= int8_quality.MAX_PROBE_DROP
    assert {"cosine_median", "cosine_p1", "probe_accuracy_int8", "passed"} <= set(q.to_dict())


def test_quality_fails_on_low_cosine_and_on_a_probe_drop():
    x, y, g = _separable()
    noisy = x + np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    assert any("cosine" in f for f in int8_quality.check_quality(x, noisy, y, g, classes=2).failures)
    # the one class-informative column wiped out, under a large shared offset: cosine stays high, probe drops
    wiped = x.copy()
    wiped[:, 0] = 0.0
    big = np.concatenate([x, np.full((len(x), 400), 5.0, np.float32)], axis=1)
    big_wiped = np.concatenate([wiped, np.full((len(x), 400), 5.0, np.float32)], axis=1)
    q = int8_quality.check_quality(big, big_wiped, y, g, classes=2)
    assert q.cosine_p1 >= int8_quality.MIN_COSINE
    assert q.probe_accuracy_fp32 - q.probe_accuracy_int8 > 0.2
    assert [f for f in q.failures if "probe" in f] and not q.passed


def test_quality_without_two_classes_checks_cosine_only():
    x, _, g = _separable(40)
    q = int8_quality.check_quality(x, x, np.zeros(40, np.int64), g, classes=2)
    assert q.passed and q.probe_accuracy_int8 is None and "two classes" in q.line()


@needs_vnni
def test_forced_quality_failure_refuses_with_the_figures(synth_tree, monkeypatch, one_thread):
    from fastall.features.backbone import load_backbone
    from fastall.features.inputs import discover_dataset

    records = discover_dataset(synth_tree, (), None, lambda m: None, None).records
    model, info = load_backbone("none", seed=0, backbone="resnet18", image_size=32)
    real = int8_quality.quantize_int8

    def broken(*args, **kwargs):
        q = real(*args, **kwargs)
        return lambda x: q(x) + 5.0 * torch.randn(x.shape[0], 512)

    monkeypatch.setattr(int8_quality, "quantize_int8", broken)
    with pytest.raises(FastallError) as err:
        int8_quality.build_int8(model, records, size=32, norm=(info.mean, info.std), seed=0, classes=2)
    text = str(err.value)
    assert "\n" not in text and "int8 refused" in text
    assert "cosine to fp32 median" in text and "1st percentile" in text and "probe accuracy" in text


@needs_vnni
def test_calibrated_int8_passes_and_records_its_images(synth_tree, one_thread):
    from fastall.features.backbone import load_backbone
    from fastall.features.inputs import discover_dataset

    records = discover_dataset(synth_tree, (), None, lambda m: None, None).records
    model, info = load_backbone("none", seed=0, backbone="resnet18", image_size=32)
    built = int8_quality.build_int8(
        model, records, size=32, norm=(info.mean, info.std), seed=0, classes=2, n=24
    )
    attrs = built.attrs()
    picked = [records[i].rel_path for i in quantize.calibration_indices(len(records), 0, 24)]
    assert attrs["int8_calibration"] == picked
    assert attrs["int8_quality"]["passed"] and attrs["int8_quality"]["images"] == 24


def test_non_vnni_cpu_is_refused_in_one_line(monkeypatch):
    emulate_avx2(monkeypatch)
    assert not cpu_capability().vnni
    with pytest.raises(FastallError, match="needs a CPU with VNNI or AMX") as err:
        quantize.require_int8_cpu("cpu")
    assert "\n" not in str(err.value) and "emulated" in str(err.value)
    assert quantize.int8_hint("cpu", "bf16") is None


@needs_vnni
def test_vnni_cpu_gets_the_hint_unless_int8_is_chosen():
    quantize.require_int8_cpu("cpu")
    hint = quantize.int8_hint("cpu", "bf16")
    assert hint is not None and "--precision int8" in hint and "\n" not in hint
    assert f"{quantize.MEASURED_INT8_VS_BF16:.1f}x bf16" in hint
    assert quantize.int8_hint("cpu", "int8") is None


def test_hint_figure_is_the_benchmark_measurement():
    result = json.loads(RESULTS.read_text())
    measured = result["ratios"]["int8_vs_bf16_extract"]
    assert abs(quantize.MEASURED_INT8_VS_BF16 - measured) <= 0.05
    assert quantize.MEASURED_INT8_VS_BF16 > 1.0


@needs_vnni
def test_extract_int8_writes_its_quality_figures_and_calibration_set(synth_tree, tmp_path, one_thread):
    import h5py

    from fastall.features.cache import read_cache
    from fastall.features.extract import extract
    from fastall.system.events import Reporter

    events: list = []
    common = dict(views=2, image_size=32, weights="none", backbone="resnet18", device="cpu", workers=0)
    extract(synth_tree, tmp_path / "c.h5", precision="int8", reporter=Reporter(events.append), **common)
    with h5py.File(tmp_path / "c.h5") as f:
        assert f.attrs["precision"] == "int8" and f.attrs["amp_dtype"] == "int8"
        quality = json.loads(f.attrs["int8_quality"])
        calibration = json.loads(f.attrs["int8_calibration"])
    assert quality["passed"] and quality["cosine_p1"] >= 0.99 and quality["probe_accuracy_int8"] is not None
    paths = set(read_cache(tmp_path / "c.h5").paths)
    assert len(calibration) == quality["images"] and calibration[0] in paths
    assert any(e.code == "int8-quality" for e in events)
    events.clear()
    extract(synth_tree, tmp_path / "b.h5", precision="auto", reporter=Reporter(events.append), **common)
    assert read_cache(tmp_path / "b.h5", load_features=False).key_params["amp_dtype"] != "int8"
    assert [e for e in events if e.code == "int8-hint"]
