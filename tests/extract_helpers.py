"""Shared by the extract/backbone/cache tests: a tiny synthetic tree and a fast, quiet extract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

from fastall.data.synth import synthesize
from fastall.features.extract import extract
from fastall.system.events import Reporter

FAST = {"views": 3, "image_size": 32, "weights": "none", "device": "cpu"}


def one_thread():
    """Context for tests: one torch thread (2 contended cores make oneDNN's thread pool crawl)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tiny_tree(root: Path) -> Path:
    synthesize(root, patients_per_class=2, images_per_patient=3, size=48, prelim=False)
    return root


def texts(reporter: Reporter) -> list[str]:
    """The texts of the warnings ``reporter`` received."""
    return [w["text"] for w in reporter.warnings]


def run_extract(data: Path, out: Path, **kwargs):
    return extract(data, out, **{**FAST, "batch_size": 4, "workers": 0, **kwargs})


def spawn_extract(data: Path, out: Path, env: dict[str, str] | None = None, wait: bool = True, **kwargs):
    """Run extract in a fresh interpreter (for kill tests); returns the CompletedProcess or the Popen."""
    args = {**FAST, "batch_size": 2, "workers": 0, **kwargs}
    code = (
        "import json, sys; from fastall.features.extract import extract; from fastall.system import faults; "
        "faults.install(faults.env_hook()); "
        f"extract({str(data)!r}, {str(out)!r}, **json.loads(sys.argv[1]))"
    )
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-c", code, json.dumps(args)]
    if not wait:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300)


PROVENANCE = {
    "created",
    "device",
    "device_name",
    "batch_size",
    "workers",
    "torch_version",
    "torchvision_version",
    "fastall_version",
    "data_root",
    "weights_source",
    "backbone_params",
    "extract_s_per_image",
}


def assert_same_cache(a: Path, b: Path) -> None:
    """Same datasets, bit for bit, and the same attributes apart from provenance."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa) == sorted(fb)
        for name in fa:
            x, y = fa[name][()], fb[name][()]
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert np.array_equal(x, y), name
        keep = lambda f: {k: v for k, v in f.attrs.items() if k not in PROVENANCE}  # noqa: E731
        ka, kb = keep(fa), keep(fb)
        assert ka.keys() == kb.keys()
        for k in ka:
            assert np.array_equal(ka[k], kb[k]), k
