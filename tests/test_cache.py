"""The cache: atomic writer, validating reader, zero-copy accessors; the lock and partial shards."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from fastall.errors import CacheError
from fastall.features import cache as fc
from fastall.features import shards as partial
from fastall.system import faults, files, procs

KEY = {"backbone": "resnet50", "weights": "none", "image_size": 32, "views": 2, "seed": 0}


def _write(path, n=6, views=2, dim=8, key=KEY, skipped=()):
    rng = np.random.default_rng(0)
    return fc.write_cache(
        path,
        features=rng.standard_normal((n, views, dim)).astype(np.float16),
        rows=fc.ImageRows(
            labels=np.arange(n) % 2,
            patients=[f"P{i // 2}" for i in range(n)],
            paths=[f"x/{i}.bmp" for i in range(n)],
            sources=["fold_0"] * n,
        ),
        class_names=["hem", "all"],
        view_params=np.zeros((n, views, 11), dtype=np.float32),
        view_param_names=[f"p{i}" for i in range(11)],
        key_params=dict(key),
        provenance={"created": "now", "torch_version": "x"},
        skipped=list(skipped),
    )


def test_roundtrip_and_zero_copy_torch(tmp_path):
    path = _write(tmp_path / "c.h5", skipped=[("x/bad.bmp", "truncated")])
    cache = fc.read_cache(path)
    assert cache.n_images == 6 and cache.n_views == 2 and cache.dim == 8 and cache.key == fc.cache_key(KEY)
    assert cache.skipped == [("x/bad.bmp", "truncated")] and cache.key_params == KEY
    features, labels, groups = cache.as_torch()
    assert features.dtype == torch.float16 and features.data_ptr() == cache.features.ctypes.data
    assert labels.data_ptr() == cache.labels.ctypes.data
    assert groups.tolist() == [0, 0, 1, 1, 2, 2]
    light = fc.read_cache(path, load_features=False)
    assert light.features.size == 0 and light.dim == 8
    assert os.listdir(tmp_path) == ["c.h5"]


def test_expect_names_differing_parameters(tmp_path):
    path = _write(tmp_path / "c.h5")
    assert fc.read_cache(path, expect={"backbone": "resnet50", "image_size": 32}).n_images == 6
    with pytest.raises(CacheError, match=r"image_size: 32 -> 224.*weights: \"none\" -> \"imagenet1k_v1\""):
        fc.read_cache(path, expect={"image_size": 224, "weights": "imagenet1k_v1"})
    assert fc.diff_params({"a": 1, "b": 2}, {"a": 1, "b": 3}) == ["b: 2 -> 3"]


@pytest.mark.parametrize("damage", ["truncate", "zero_middle", "empty", "text"])
def test_corrupt_or_truncated_cache_is_refused(tmp_path, damage):
    path = _write(tmp_path / "c.h5", n=200)
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "zero_middle":
        path.write_bytes(blob[:2048] + b"\0" * (len(blob) - 4096) + blob[-2048:])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("not hdf5")
    with pytest.raises(CacheError) as err:
        fc.read_cache(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_altered_or_foreign_caches_are_refused(tmp_path):
    path = _write(tmp_path / "c.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["key_params"] = json.dumps({**KEY, "image_size": 64})
    with pytest.raises(CacheError, match="altered"):
        fc.read_cache(path)
    path = _write(tmp_path / "d.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(CacheError, match="schema version 99"):
        fc.read_cache(path)
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(CacheError, match="not a fastall cache"):
        fc.read_cache(tmp_path / "e.h5")


def test_missing_cache_mentions_unfinished_work(tmp_path):
    (tmp_path / "c.h5.partial").mkdir()
    with pytest.raises(CacheError, match="resume"):
        fc.read_cache(tmp_path / "c.h5")


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(h5py, "File", no_space)
    with pytest.raises(CacheError, match="no space left on device"):
        _write(tmp_path / "c.h5")
    assert list(tmp_path.iterdir()) == []


def test_enospc_inside_h5py_is_one_clean_error_and_the_old_cache_stays(tmp_path, monkeypatch):
    """A disk that fills while HDF5 writes: h5py never sees the error (HDF5 2.0 segfaults on one)."""
    path = _write(tmp_path / "c.h5", n=4)
    before = path.read_bytes()
    real_pwrite, seen = os.pwrite, []

    def fill_up(fd, data, offset):
        if offset + len(data) > 50_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    real_file = h5py.File

    def spy(*args, **kwargs):
        f = real_file(*args, **kwargs)
        seen.append(kwargs.get("driver") or type(args[0]).__name__)
        return f

    monkeypatch.setattr(os, "pwrite", fill_up)
    monkeypatch.setattr(h5py, "File", spy)
    with pytest.raises(CacheError, match=r"c\.h5: cannot write cache: no space left on device$") as err:
        _write(path, n=200, views=8, dim=64)
    assert "\n" not in str(err.value) and seen == ["_GuardedFile"]
    assert os.listdir(tmp_path) == ["c.h5"] and path.read_bytes() == before
    (tmp_path / "c.h5.partial").mkdir()
    with pytest.raises(CacheError, match=r"c\.h5\.partial is kept: run extract again to resume"):
        _write(path, n=200, views=8, dim=64)


def test_the_free_space_check_runs_before_any_byte_is_written(tmp_path, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: usage(10**9, 10**9 - 10**5, 10**5))
    monkeypatch.setattr(os, "open", lambda *a, **k: pytest.fail("the cache was opened despite a full disk"))
    with pytest.raises(CacheError, match=r"no space left on device \(about 6\.4 MiB needed, 0\.1 MiB free\)"):
        _write(tmp_path / "c.h5", n=200, views=8, dim=2048)


def test_expected_size_is_close_to_the_real_size(tmp_path):
    for n, views, dim in [(200, 8, 2048), (3000, 2, 64)]:
        path = _write(tmp_path / f"c{n}.h5", n=n, views=views, dim=dim, key={**KEY, "views": views})
        c = fc.read_cache(path)
        guess = fc.expected_cache_bytes((n, views, dim), (n, views, 11), [*c.patients, *c.paths, *c.sources])
        assert 1.0 <= guess / path.stat().st_size < 1.2, (n, guess, path.stat().st_size)


def test_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    target = tmp_path / "c.h5"
    with partial.cache_lock(target) as lock:
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["started"]
        with pytest.raises(CacheError, match=f"pid {os.getpid()}"), partial.cache_lock(target):
            pass
    assert not lock.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": "then"}))
    warnings: list[str] = []
    with partial.cache_lock(target, warn=warnings.append):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert warnings and "stale lock" in warnings[0]
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    with pytest.raises(CacheError, match="host elsewhere"), partial.cache_lock(target):
        pass


def _lock(path, pid, pid_start="<absent>", age=0.0):
    holder = {"pid": pid, "host": socket.gethostname(), "started": "then"}
    if pid_start != "<absent>":
        holder["pid_start"] = pid_start
    path.write_text(json.dumps(holder))
    if age:
        os.utime(path, (time.time() - age, time.time() - age))


@pytest.mark.skipif(procs.process_start(os.getpid()) is None, reason="no /proc: start times unknown")
def test_a_lock_naming_a_reused_pid_is_stale(tmp_path):
    """After a container restart a lock can name this process's own pid, or pid 1: both are taken over."""
    target, lock = tmp_path / "c.h5", tmp_path / "c.h5.lock"
    boot = procs.process_start(os.getpid()).split(":")[0]
    cases = {
        "own pid, another start": (os.getpid(), f"{boot}:1"),
        "own pid, older fastall lock": (os.getpid(), "<absent>"),
        "pid 1, another start": (1, f"{boot}:999999999"),
        "pid 1, another boot": (1, "another-boot:" + procs.process_start(1).split(":")[1]),
    }
    for name, (pid, start) in cases.items():
        _lock(lock, pid, start)
        warnings: list[str] = []
        with partial.cache_lock(target, warn=warnings.append):
            held = json.loads(lock.read_text())
            assert held["pid"] == os.getpid() and held["pid_start"] == procs.process_start(os.getpid()), name
        assert len(warnings) == 1 and f"stale lock {lock} (pid {pid}" in warnings[0], name
        assert not lock.exists()
    started_pid1 = procs.process_started_at(1)
    _lock(lock, 1, age=time.time() - started_pid1 + 3600)  # an older fastall's lock from before pid 1 started
    with partial.cache_lock(target):
        pass


def test_a_lock_of_a_live_process_is_refused_naming_the_lock_file(tmp_path):
    target, lock = tmp_path / "c.h5", tmp_path / "c.h5.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for start in [procs.process_start(sleeper.pid), "<absent>"]:
            _lock(lock, sleeper.pid, start)
            with pytest.raises(CacheError) as err, partial.cache_lock(target):
                pass
            message = str(err.value)
            assert (
                message.startswith(f"{lock}: another extract (pid {sleeper.pid}")
                and "delete this lock" in message
            )
        _lock(lock, 1)  # pid 1, an older fastall's lock written after pid 1 started: it may hold it
        with pytest.raises(CacheError, match="pid 1,"), partial.cache_lock(target):
            pass
    finally:
        sleeper.kill()
        sleeper.wait()


def test_partial_store_roundtrip_and_recovery(tmp_path):
    store = partial.PartialStore(tmp_path / "c.h5")
    assert store.meta() is None
    store.start(fc.cache_key(KEY), KEY)
    assert store.meta()["key"] == fc.cache_key(KEY)
    feats = np.ones((2, 3, 4), dtype=np.float16)
    store.write_shard(np.array([4, 5]), feats, np.zeros((2, 3, 11)), skipped=[(6, "x: truncated")])
    store.write_shard(np.array([0, 1]), feats * 2, np.zeros((2, 3, 11)))
    (store.dir / ".batch-000000009.npz.tmp").write_bytes(b"half")
    (store.dir / "batch-000000002.npz").write_bytes(b"garbage")
    warnings: list[str] = []
    done, skipped = store.load(10, 3, 4, warn=warnings.append)
    assert sorted(done) == [0, 1, 4, 5] and skipped == {6: "x: truncated"}
    assert float(done[0][0][0, 0]) == 2.0 and done[4][1].shape == (3, 11)
    assert len(warnings) == 1 and "batch-000000002" in warnings[0]
    assert sorted(p.name for p in store.dir.iterdir()) == [
        "batch-000000000.npz",
        "batch-000000004.npz",
        "meta.json",
    ]
    assert store.load(10, 2, 4)[0] == {}  # other view count: shards are not taken for this run
    store.remove()
    assert not store.dir.exists()


def test_fault_points_are_inert_without_a_hook(monkeypatch):
    """Library code passes its durable steps with nothing done (even with a FASTALL_TEST_* variable set: only
    the CLI reads them); with the hook the variables describe, the n-th pass of its point only."""
    calls: list[tuple] = []
    monkeypatch.setattr(faults.os, "kill", lambda *a: calls.append(("kill", *a)))
    monkeypatch.setattr(faults.time, "sleep", lambda *a: calls.append(("sleep", *a)))
    monkeypatch.setenv(faults.KILL_ENV, "shard:1")
    monkeypatch.setenv(faults.INTERRUPT_ENV, "cleanup")
    with faults.installed(None):
        for name in ("shard", "shard", "finalize", "cleanup"):
            assert faults.reached(name) is None
        assert not faults.disk_full("text")
    assert calls == []
    assert faults.env_hook({}) is None and faults.env_hook({faults.KILL_ENV: ""}) is None
    with faults.installed(faults.env_hook({faults.KILL_ENV: "shard:2", faults.INTERRUPT_ENV: "cleanup"})):
        faults.reached("finalize")
        faults.reached("shard")
        assert calls == []
        faults.reached("shard")
        assert calls == [("kill", os.getpid(), faults.signal.SIGKILL), ("sleep", 600)]
        with pytest.raises(KeyboardInterrupt):
            faults.reached("cleanup")
    with faults.installed(faults.env_hook({faults.ENOSPC_ENV: "text"})):
        assert faults.disk_full("text") and not faults.disk_full("torch-save")
    assert not hasattr(files, "kill_point")  # one name for the hook: faults.reached
