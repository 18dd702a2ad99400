"""`fastall bench` defaults (CPU batch sizes 1,8,32, fewer iterations), its up-front estimate, and the machine
record every benchmark JSON carries (no timed assertions)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from fastall.cli import cli
from fastall.inference.bench import DEFAULT_BATCH_SIZES, estimate_s
from fastall.system.machine import DECIDING_FLAGS, machine_info


def test_cpu_defaults_and_the_estimate_come_first():
    args = ["bench", "--device", "cpu", "--images", "3", "--image-size", "32", "--threads", "1"]
    result = CliRunner().invoke(cli, [*args, "--backend", "eager", "--iters", "2", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["settings"]["batch_sizes"] == [1, 8, 32] == list(DEFAULT_BATCH_SIZES["cpu"])
    assert out["settings"]["batches"] == 2 and out["settings"]["warmup"] == 3
    assert [t["batch_size"] for t in out["throughput"]] == [1, 8, 32]
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith("bench: about ") and first.split()[2].isdigit()
    assert out["estimated_s"] > 0
    assert out["precision_decision"]["requested"] == "fp32" and out["precision_decision"]["device"] == "cpu"


def test_the_default_iterations_are_fewer():
    from fastall.cli.inference import bench

    defaults = {p.name: p.default for p in bench.params}
    assert (
        defaults["iters"] == 20 and defaults["batch_sizes"] is None and "auto" in bench.params[2].type.choices
    )


def test_estimate_grows_with_images_on_cpu_and_with_calls_on_gpu():
    plan = {"batch_sizes": (1, 8, 32), "check": 0, "warmup": 3, "iters": 20, "batches": 2}
    plan.update(precision="fp32", onnx=False)
    cpu = estimate_s(0.1, torch.device("cpu"), plan)
    assert cpu == pytest.approx(0.1 * (3 + 40 + 6 * 41))
    bigger = estimate_s(0.1, torch.device("cpu"), {**plan, "batch_sizes": (1, 8, 32, 256)})
    assert bigger > 5 * cpu
    gpu = estimate_s(0.1, torch.device("cuda"), {**plan, "batch_sizes": (1, 8, 32, 256)})
    assert gpu == pytest.approx(0.1 * (3 + 40 + 6 * 4))
    assert estimate_s(0.1, torch.device("cpu"), {**plan, "onnx": True}) == pytest.approx(2 * cpu)


def test_machine_record_names_the_capability_class_and_flags():
    info = machine_info("cpu")
    assert info["cpu_capability"] in ("baseline", "AVX2", "AVX512", "AVX512_BF16", "AMX")
    assert set(info["cpu_flags"]) == set(DECIDING_FLAGS)
    for key in ("cpu", "torch", "torch_threads", "interop_threads", "cores", "cpu_capability_label", "date"):
        assert key in info
    assert info["cpu_capability_emulated"] == (info["cpu_capability"] != info["cpu_capability_hardware"])
