"""The one precision resolver: auto by what the hardware computes natively, recorded in the cache and the run;
the older --amp/--no-amp/--amp-dtype flags as aliases."""

from __future__ import annotations

import json

import h5py
import pytest
from click.testing import CliRunner
from extract_helpers import one_thread, run_extract, tiny_tree

from fastall.cli import cli
from fastall.errors import FastallError
from fastall.features.cache import read_cache
from fastall.system import machine
from fastall.system.devices import decide_precision, precision_alias, resolve_precision

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)

AVX2_ONLY = {"avx2": True, **{f: False for f in machine.FLAGS if f != "avx2"}}
BF16 = {**AVX2_ONLY, "avx512f": True, "avx512_bf16": True, "avx512_vnni": True}


def _capability(flags: dict[str, bool], effective: str | None = None) -> machine.CpuCapability:
    hardware = machine._hardware_class(flags)
    return machine.CpuCapability("Test CPU", hardware, effective or hardware, "AVX2", flags, {})


@pytest.fixture
def avx2_cpu(monkeypatch):
    """A CPU that reports no native bf16 (AVX2 only)."""
    monkeypatch.setattr(machine, "cpu_capability", lambda: _capability(AVX2_ONLY))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_tree(tmp_path_factory.mktemp("data"))


def test_auto_is_fp32_on_a_cpu_without_native_bf16(avx2_cpu):
    choice = decide_precision("auto", "cpu")
    assert choice.precision == "fp32" and choice.requested == "auto" and choice.autocast_dtype is None
    assert "no native bf16" in choice.reason and "AVX2" in choice.reason and choice.capability == "AVX2"
    assert resolve_precision("auto", "cpu") == "fp32"
    explicit = decide_precision("bf16", "cpu")
    assert explicit.precision == "bf16" and not explicit.native and "emulated" in explicit.reason


def test_auto_is_bf16_where_the_cpu_computes_it(monkeypatch):
    monkeypatch.setattr(machine, "cpu_capability", lambda: _capability(BF16))
    choice = decide_precision("auto", "cpu")
    assert choice.precision == "bf16" and "avx512_bf16" in choice.reason and choice.native
    monkeypatch.setattr(machine, "cpu_capability", lambda: _capability({**BF16, "amx_bf16": True}))
    assert "AMX" in decide_precision("auto", "cpu").reason


def test_an_avx512_cpu_without_bf16_gets_fp32(monkeypatch):
    flags = {**AVX2_ONLY, "avx512f": True, "avx512_vnni": True}
    monkeypatch.setattr(machine, "cpu_capability", lambda: _capability(flags))
    assert decide_precision("auto", "cpu").precision == "fp32"


def test_isa_limits_emulate_a_smaller_cpu(monkeypatch):
    monkeypatch.setattr(machine, "cpu_flags", lambda: dict(BF16))
    for name in machine.ISA_ENV:
        monkeypatch.delenv(name, raising=False)
    native = machine.cpu_capability()
    assert native.hardware == "AVX512_BF16" and native.vnni
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    cap = machine.cpu_capability()
    assert cap.hardware == "AVX512_BF16" and cap.effective == "AVX2" and cap.emulated
    assert not cap.native_bf16 and not cap.vnni
    assert cap.label == "AVX2 (emulated on an AVX512_BF16 machine)"
    assert decide_precision("auto", "cpu").precision == "fp32"


def test_fp16_on_a_cpu_without_it_is_refused(avx2_cpu):
    with pytest.raises(FastallError, match="no native fp16"):
        decide_precision("fp16", "cpu")
    with pytest.raises(FastallError, match="expected auto, fp32 or bf16"):
        resolve_precision("fp16", "cpu")


def test_amp_flags_are_aliases():
    assert precision_alias("auto", None, None) == "auto"
    assert precision_alias("auto", False, None) == "fp32"
    assert precision_alias("auto", True, None) == "bf16"
    assert precision_alias("auto", None, "fp16") == "fp16"
    assert precision_alias("bf16", True, "bf16") == "bf16"
    with pytest.raises(FastallError, match="contradicts --no-amp"):
        precision_alias("bf16", False, None)


def test_auto_extract_records_the_choice_in_the_cache(data, tmp_path, avx2_cpu):
    summary = run_extract(data, tmp_path / "c.h5", views=1)
    cache = read_cache(tmp_path / "c.h5", load_features=False)
    assert cache.key_params["amp"] is False and cache.key_params["amp_dtype"] == "fp32"
    assert summary.amp_dtype == "fp32" and summary.precision["requested"] == "auto"
    attrs = cache.attrs
    assert attrs["precision_requested"] == "auto" and attrs["precision"] == "fp32"
    assert "no native bf16" in attrs["precision_reason"] and attrs["cpu_capability"] == "AVX2"
    assert json.loads(attrs["cpu_flags"]) == {f: False for f in machine.DECIDING_FLAGS}


def test_explicit_fp32_and_no_amp_make_the_same_cache(data, tmp_path):
    a = run_extract(data, tmp_path / "a.h5", views=1, precision="fp32")
    b = run_extract(data, tmp_path / "b.h5", views=1, amp=False)
    assert a.key == b.key and a.amp_dtype == b.amp_dtype == "fp32"


def _cli_extract(data, out, *flags):
    args = [
        "extract",
        str(data),
        "--out",
        str(out),
        "--views",
        "1",
        "--image-size",
        "32",
        "--weights",
        "none",
    ]
    return CliRunner().invoke(cli, [*args, "--device", "cpu", "--batch-size", "4", "--workers", "0", *flags])


def test_cli_amp_aliases_and_precision(data, tmp_path, avx2_cpu):
    for flags, expect in [
        (["--no-amp"], "fp32"),
        (["--amp"], "bf16"),
        (["--amp-dtype", "bf16"], "bf16"),
        (["--precision", "fp32"], "fp32"),
        ([], "fp32"),  # auto on a CPU without native bf16
    ]:
        out = tmp_path / f"{'_'.join(flags) or 'auto'}.h5"
        result = _cli_extract(data, out, *flags)
        assert result.exit_code == 0, result.output
        with h5py.File(out, "r") as f:
            assert f.attrs["amp_dtype"] == expect, flags
        assert f"precision {expect}:" in result.output
    emulated = _cli_extract(data, tmp_path / "e.h5", "--precision", "bf16", "--overwrite")
    assert "emulated" in emulated.output
    clash = _cli_extract(data, tmp_path / "x.h5", "--precision", "bf16", "--no-amp")
    assert clash.exit_code == 1 and "contradicts --no-amp" in clash.output


@pytest.mark.parametrize(("int8_ms", "chosen"), [(10.0, "fp32"), (2.0, "int8")])
def test_export_auto_chooses_by_measured_speed(tmp_path_factory, monkeypatch, int8_ms, chosen):
    """int8 agrees in both cases; auto keeps it only where it measured faster than fp32."""
    from e2e_helpers import images_of, shared_run

    import fastall.inference.export as export
    import fastall.inference.precision as precision
    from fastall.inference.artifacts import load_run

    e2e = shared_run(tmp_path_factory)
    monkeypatch.setattr(precision, "MIN_PRECISION_AGREEMENT", 0.0)
    measured = []

    def fake_latency(models, pixels, rounds=7):
        measured.append(sorted(models))
        return {name: {"fp32": 5.0, "int8": int8_ms}.get(name, 50.0) for name in models}  # bf16: slow

    monkeypatch.setattr(export, "latency_ms", fake_latency)
    pixels = images_of(e2e, 4)
    model, choice = export.choose_precision(load_run(e2e.run), pixels, pixels, precisions=None)
    assert len(measured) == 1 and {"fp32", "int8"} <= set(measured[0])
    assert choice["precision"] == model.precision == chosen and choice["fp32_batch1_ms"] == 5.0
    assert choice["trials"][0]["batch1_ms"] == int8_ms and choice["trials"][0]["agrees"]
    if chosen == "fp32":
        assert "faster than fp32" in choice["reason"]


def test_latency_ms_measures_every_model(tmp_path_factory):
    from e2e_helpers import images_of, shared_run

    from fastall.inference.artifacts import load_run
    from fastall.inference.precision import latency_ms

    e2e = shared_run(tmp_path_factory)
    base = load_run(e2e.run)
    times = latency_ms({"a": base, "b": base.optimize("fp32", backend="eager")}, images_of(e2e, 1), rounds=2)
    assert sorted(times) == ["a", "b"] and all(t > 0 for t in times.values())
