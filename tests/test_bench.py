"""`fastall bench`: the JSON fields on a tiny input (no timed assertions)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from e2e_helpers import shared_run

from fastall.cli import cli

TINY = [
    "--device",
    "cpu",
    "--batch-sizes",
    "1,2",
    "--images",
    "4",
    "--image-size",
    "64",
    "--iters",
    "3",
    "--threads",
    "1",
    "--backend",
    "eager",
    "--json",
]


def _bench(*args: str):
    result = CliRunner().invoke(cli, ["bench", *args])
    return result, (json.loads(result.stdout) if result.exit_code == 0 else None)


def test_bench_json_fields():
    result, out = _bench(*TINY)
    assert result.exit_code == 0, result.output
    for key in ("platform", "cpu", "cores", "torch", "device", "device_name", "date"):
        assert key in out["machine"]
    assert out["machine"]["device"] == "cpu" and out["image_size"] == 64 and out["precision"] == "fp32"
    assert out["backend"] == "eager"
    assert "random" in out["model"]
    for path in ("end_to_end", "model_only"):
        lat = out["latency_batch1"][path]
        assert lat["n"] == 3 and 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    assert [t["batch_size"] for t in out["throughput"]] == [1, 2]
    for t in out["throughput"]:
        assert t["end_to_end_img_s"] > 0 and t["model_only_img_s"] > 0 and t["end_to_end_vs_model_only"] > 0
    claim = out["paper_claim"]
    assert claim["ms_per_image"] == 50.0 and isinstance(claim["meets_claim"], bool)
    assert claim["end_to_end_p50_ms"] == out["latency_batch1"]["end_to_end"]["p50_ms"]
    assert out["agreement_vs_fp32"] is None


def test_bench_table_shows_the_paper_claim():
    result = CliRunner().invoke(cli, ["bench", *TINY[:-1], "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    assert "< 50 ms" in result.stdout and "end-to-end" in result.stdout
    assert "agrees with fp32" in result.stdout


def test_bench_a_trained_run_with_int8(tmp_path_factory):
    e2e = shared_run(tmp_path_factory)
    result, out = _bench(*TINY[:-3], "--json", "--run", str(e2e.run), "--precision", "int8")
    assert result.exit_code == 0, result.output
    assert out["precision"] == "int8" and out["backend"] == "jit" and out["image_size"] == 32
    assert str(e2e.run) in out["model"]
    agree = out["agreement_vs_fp32"]
    assert agree["images"] == 4 and 0 <= agree["agreement"] <= 1 and agree["precision"] == "int8"
    assert out["machine"]["torch_threads"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-sizes", "1,x"], "comma-separated integers"),
        (["--batch-sizes", "0"], "must be positive"),
        (["--precision", "int4"], "int4"),
    ],
)
def test_bench_refuses_bad_options(args, message):
    result = CliRunner().invoke(cli, ["bench", *args])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_bench_cuda_without_a_gpu():
    result = CliRunner().invoke(cli, ["bench", "--device", "cuda", "--images", "2"])
    assert result.exit_code == 1 and "no CUDA device" in result.output
