"""Shared plumbing: the device resolver and the plain-data converter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fastall.errors import FastallError
from fastall.system.devices import resolve_device
from fastall.system.jsonable import plain


def test_resolve_device_names():
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "cuda:-1", "tpu:0", ""):
        with pytest.raises(FastallError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_resolve_device_without_a_gpu(name, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FastallError, match=f"--device {name}: no CUDA device is available") as err:
        resolve_device(name)
    assert "\n" not in str(err.value)


def test_resolve_device_with_a_gpu(monkeypatch):
    """Two CUDA devices, on any machine (CI has none): resolve_device reads only what torch reports."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    count = 2
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda") == torch.device("cuda")
    assert resolve_device(f"cuda:{count - 1}") == torch.device(f"cuda:{count - 1}")
    with pytest.raises(FastallError, match=f"only {count} CUDA device"):
        resolve_device(f"cuda:{count}")


def test_plain_gives_json_and_weights_only_safe_data(tmp_path):
    value = {
        1: (np.float32(0.5), np.int64(3), np.bool_(True)),
        "nan": float("nan"),
        "inf": [math.inf, -math.inf],
        "path": Path("a/b"),
        "version": torch.__version__,
        "nested": {"none": None, "s": "x"},
    }
    out = plain(value)
    assert out == {
        "1": [0.5, 3, True],
        "nan": None,
        "inf": [None, None],
        "path": "a/b",
        "version": str(torch.__version__),
        "nested": {"none": None, "s": "x"},
    }
    assert type(out["version"]) is str and type(out["1"][1]) is int and type(out["1"][2]) is bool
    json.dumps(out, allow_nan=False)
    torch.save(out, tmp_path / "x.pt")
    assert torch.load(tmp_path / "x.pt", weights_only=True) == out
