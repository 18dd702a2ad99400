"""ONNX export: uint8 pixels -> probabilities in one graph, round-tripped through ONNX Runtime with the
agreement check; `bench --onnx` times it beside PyTorch; without the extra, one line naming it."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from e2e_helpers import images_of, shared_run

from fastall.cli import cli
from fastall.errors import FastallError
from fastall.inference.artifacts import load_run

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def exported(e2e, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    result = CliRunner().invoke(
        cli, ["export", str(e2e.run), "--format", "onnx", "--out", str(out), "--images", "8"]
    )
    assert result.exit_code == 0, result.output
    assert "ONNX fp32" in result.stdout and "agreement with PyTorch" in result.stdout
    return out


def test_onnx_round_trip_agrees_with_pytorch(e2e, exported):
    proto = onnx.load(str(exported))
    (inp,) = proto.graph.input
    dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8 and dims[1:] == [3, 32, 32]
    meta = {p.key: p.value for p in proto.metadata_props}
    check = json.loads(meta["onnx_check"])
    assert check["passed"] and check["agreement"] >= 0.995 and check["max_dprob"] <= 1e-3
    assert json.loads(meta["class_names"]) == ["hem", "all"] and meta["image_size"] == "32"
    # independently of the export's own check: ORT on other images, any batch size, vs PyTorch fp32
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    pixels = images_of(e2e, 5)
    logits, probs = session.run(None, {"pixels": pixels.numpy()})
    with torch.inference_mode():
        ref = load_run(e2e.run).predict_proba(pixels).numpy()
    assert probs.shape == (5, 2) and np.abs(probs - ref).max() <= 1e-3
    assert (probs.argmax(1) == ref.argmax(1)).all()
    assert np.allclose(probs, torch.softmax(torch.from_numpy(logits), 1).numpy(), atol=1e-6)


def test_onnx_export_that_disagrees_is_not_written(e2e, tmp_path, monkeypatch):
    import fastall.inference.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "MAX_DPROB", -1.0)
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        cli, ["export", str(e2e.run), "--format", "onnx", "--out", str(out), "--images", "4"]
    )
    assert result.exit_code == 1 and "not written" in result.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_bench_times_onnx_beside_pytorch(exported):
    args = ["bench", "--device", "cpu", "--batch-sizes", "1,2", "--images", "4", "--iters", "3"]
    result = CliRunner().invoke(
        cli, [*args, "--threads", "1", "--backend", "eager", "--onnx", str(exported), "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["image_size"] == 32  # taken from the ONNX model's input
    block = out["onnx"]
    assert block["provider"] == "CPUExecutionProvider"
    assert (
        block["latency_batch1"]["end_to_end"]["n"] == 3
        and block["latency_batch1"]["model_only"]["p50_ms"] > 0
    )
    assert [t["batch_size"] for t in block["throughput"]] == [1, 2]
    assert block["agreement_vs_fp32"]["images"] == 4


def test_without_the_extra_one_line_names_it(e2e, tmp_path, monkeypatch):
    real = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError(f"No module named {name!r}", name=name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    from fastall.inference.onnx_export import require

    with pytest.raises(FastallError, match=r"optional extra onnx .*pip install 'fastall\[onnx\]'"):
        require("--format onnx")
    result = CliRunner().invoke(
        cli, ["export", str(e2e.run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]
    )
    assert result.exit_code == 1 and "fastall[onnx]" in result.output and "Traceback" not in result.output


def test_the_export_records_a_graph_sha256_and_a_corrupted_file_is_refused(exported, tmp_path):
    from fastall.inference.onnx_export import GRAPH_SHA256, open_fastall_onnx

    meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert len(meta[GRAPH_SHA256]) == 64
    open_fastall_onnx(exported)
    data = bytearray(exported.read_bytes())
    rng = np.random.default_rng(0)
    start = len(data) // 2  # inside the weights: the file still parses
    for i in rng.choice(4096, size=1000, replace=False):
        data[start + int(i)] ^= 0xFF
    bad = tmp_path / "flipped.onnx"
    bad.write_bytes(bytes(data))
    with pytest.raises(FastallError, match="sha256 differs"):
        open_fastall_onnx(bad)


@pytest.mark.parametrize("kind", ["float input", "fixed batch", "other name", "one output"])
def test_a_foreign_onnx_model_gets_one_line(tmp_path, kind):
    from onnx import TensorProto, helper

    from fastall.inference.onnx_export import open_fastall_onnx

    dtype = TensorProto.FLOAT if kind == "float input" else TensorProto.UINT8
    batch = 1 if kind == "fixed batch" else "batch"
    name = "input" if kind == "other name" else "pixels"
    outputs = ["logits"] if kind == "one output" else ["logits", "probabilities"]
    graph = helper.make_graph(
        [helper.make_node("Identity", [name], [o]) for o in outputs],
        "foreign",
        [helper.make_tensor_value_info(name, dtype, [batch, 3, 32, 32])],
        [helper.make_tensor_value_info(o, dtype, [batch, 3, 32, 32]) for o in outputs],
    )
    model = helper.make_model(graph)
    if kind == "fixed batch":
        entry = model.metadata_props.add()
        entry.key, entry.value = "fastall_format", "fastall-onnx"
    path = tmp_path / "foreign.onnx"
    onnx.save(model, str(path))
    result = CliRunner().invoke(cli, ["bench", "--device", "cpu", "--onnx", str(path), "--images", "2"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "foreign.onnx" in errors[0], result.output
    with pytest.raises(FastallError):
        open_fastall_onnx(path)
