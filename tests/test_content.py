"""Issue 18, item 1: a cache sees content. Changed pixels of the same byte size are refused or recomputed
(`--update`), resume never mixes old and new pixels, and an unchanged tree is still a no-op."""

from __future__ import annotations

import os
import shutil
import signal

import numpy as np
import pytest
from extract_helpers import assert_same_cache, one_thread, run_extract, spawn_extract, texts, tiny_tree
from PIL import Image

from fastall.data.discover import discover
from fastall.data.fingerprint import Stamp, hash_bytes, hash_file
from fastall.data.synth import _bmp_bytes
from fastall.errors import CacheError
from fastall.features.cache import ImageRows, read_cache, write_cache
from fastall.features.shards import PartialStore
from fastall.system.events import silent

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_tree(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def ref(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "c.h5"
    run_extract(data, out)
    return out


def _copy(data, ref, tmp_path):
    """A modifiable copy of the data (mtimes kept) and of its cache."""
    shutil.copytree(data, tmp_path / "data")
    shutil.copy(ref, tmp_path / "c.h5")
    return tmp_path / "data", tmp_path / "c.h5"


def _rewrite(path, keep_mtime=False):
    """Other pixels, the same byte size (and, optionally, the same mtime)."""
    st = path.stat()
    path.write_bytes(_bmp_bytes(255 - np.asarray(Image.open(path).convert("RGB"))))
    assert path.stat().st_size == st.st_size
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_the_cache_records_what_each_image_was(data, ref):
    cache = read_cache(ref)
    records = {r.rel_path: r for r in discover(data).records}
    rows = zip(cache.paths, cache.content_hashes, cache.file_sizes, cache.file_mtimes, strict=True)
    for rel, h, size, mtime in rows:
        st = os.stat(records[rel].path)
        assert h == hash_file(records[rel].path) and len(h) == 32
        assert (size, mtime) == (st.st_size, st.st_mtime_ns)
    assert len(cache.key_params["content_fingerprint"]) == 64
    assert hash_bytes(records[rel].path.read_bytes()) == h


def test_changed_pixels_are_refused_then_update_recomputes_only_them(data, ref, tmp_path):
    copy, cache = _copy(data, ref, tmp_path)
    changed = discover(copy).records[3].path
    _rewrite(changed)
    with pytest.raises(CacheError, match=r"1 image\(s\) changed since they were cached.*--update") as info:
        run_extract(copy, cache)
    assert changed.name in str(info.value)
    rep = silent()
    summary = run_extract(copy, cache, update=True, reporter=rep)
    assert summary.computed == 1 and summary.resumed == summary.images - 1
    assert any("--update: 1 changed image(s)" in n for n in texts(rep))
    fresh = run_extract(copy, tmp_path / "fresh.h5")
    assert fresh.computed == fresh.images
    assert_same_cache(tmp_path / "fresh.h5", cache)
    assert read_cache(cache).key != read_cache(ref).key
    assert run_extract(copy, cache).skipped_existing


def test_overwrite_recomputes_everything(data, ref, tmp_path):
    copy, cache = _copy(data, ref, tmp_path)
    _rewrite(discover(copy).records[0].path)
    summary = run_extract(copy, cache, overwrite=True)
    assert summary.computed == summary.images and summary.resumed == 0


def test_an_unchanged_tree_is_a_no_op_even_when_every_file_is_touched(data, ref, tmp_path):
    copy, cache = _copy(data, ref, tmp_path)
    before = cache.stat().st_mtime_ns
    assert run_extract(copy, cache).skipped_existing
    for record in discover(copy).records:
        os.utime(record.path)
    rep = silent()
    summary = run_extract(copy, cache, reporter=rep)
    assert summary.skipped_existing and cache.stat().st_mtime_ns == before
    assert any("same content (checked by hash)" in n for n in texts(rep))


def test_a_rewrite_keeping_the_mtime_is_found_by_verify_content(data, ref, tmp_path):
    copy, cache = _copy(data, ref, tmp_path)
    _rewrite(discover(copy).records[0].path, keep_mtime=True)
    assert run_extract(copy, cache).skipped_existing  # size and mtime agree: the documented blind spot
    with pytest.raises(CacheError, match="changed since they were cached"):
        run_extract(copy, cache, verify_content=True)


def test_resume_never_mixes_old_and_new_pixels(data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    out = tmp_path / "c.h5"
    proc = spawn_extract(copy, out, env={"FASTALL_TEST_KILL_AT": "shard:1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    store = PartialStore(out)
    finished = sorted(store.stamps())
    assert finished and len(finished) < len(discover(copy).records)
    _rewrite(discover(copy).records[finished[0]].path)
    with pytest.raises(CacheError, match="unfinished work"):
        run_extract(copy, out)
    rep = silent()
    summary = run_extract(copy, out, update=True, reporter=rep)
    assert any("recomputing 1 changed image(s)" in n for n in texts(rep))
    assert summary.resumed == len(finished) - 1
    run_extract(copy, tmp_path / "fresh.h5")
    assert_same_cache(tmp_path / "fresh.h5", out)


def test_a_cache_without_hashes_falls_back_to_sizes_with_a_note(data, ref, tmp_path):
    fc = read_cache(ref)
    old = write_cache(
        tmp_path / "old.h5",
        features=fc.features,
        rows=ImageRows.of(fc),
        class_names=fc.class_names,
        view_params=fc.view_params,
        view_param_names=fc.view_param_names,
        key_params=fc.key_params,
        provenance={},
    )
    assert read_cache(old).content_hashes is None and "content_fingerprint" not in read_cache(old).key_params
    rep = silent()
    assert run_extract(data, old, reporter=rep).skipped_existing
    assert any("records no content hashes" in n for n in texts(rep))


def test_partial_store_drop_rewrites_shards_under_their_new_first_index(tmp_path):
    store = PartialStore(tmp_path / "c.h5")
    store.start("k", {})
    stamps = np.array([Stamp(f"{i:032x}", i, i).as_ints() for i in range(1, 5)], dtype=np.int64)
    store.write_shard(np.arange(4), np.zeros((4, 1, 2)), np.zeros((4, 1, 3)), [(4, "bad")], stamps=stamps)
    store.write_shard(np.arange(5, 7), np.ones((2, 1, 2)), np.zeros((2, 1, 3)))
    store.drop({0, 5, 6})
    done, bad = store.load(7, 1, 2)
    assert sorted(done) == [1, 2, 3] and bad == {4: "bad"}
    assert sorted(p.name for p in store.dir.glob("batch-*")) == ["batch-000000001.npz"]
    assert store.stamps()[2] == Stamp(f"{3:032x}", 3, 3)


def test_stamps_survive_the_int64_round_trip():
    for value in (0, 1, (1 << 128) - 1, 1 << 127, 12345678901234567890123456789):
        stamp = Stamp(f"{value:032x}" if value else "", 608_310, 1_700_000_000_123_456_789)
        assert Stamp.from_ints(np.array(stamp.as_ints(), dtype=np.int64)) == stamp
