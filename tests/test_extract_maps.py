"""`fastall extract --maps`: the maps store's schema, unchanged pooled features, kill -9 + rerun gives the
same store bit for bit, the size line, and the refusals (no room, a cut that does not exist)."""

from __future__ import annotations

import signal

import h5py
import numpy as np
import pytest
from extract_helpers import assert_same_cache, one_thread, run_extract, spawn_extract, tiny_tree

from fastall.errors import CacheError, FastallError
from fastall.features.cache import read_cache
from fastall.features.maps import open_maps
from fastall.system.events import Reporter

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)
MAPS = {"backbone": "resnet18", "image_size": 64, "precision": "fp32", "maps": "layer3", "map_views": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_tree(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def ref(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "m.h5"
    events = []
    run_extract(data, out, **MAPS, reporter=Reporter(events.append))
    lines = [e.text for e in events if e.kind == "info"]
    n = read_cache(out, load_features=False).n_images
    assert any(t.startswith(f"maps: {n} images x 2 views x 256x4x4 fp16 = 0.") for t in lines), lines
    return out


def test_store_schema_and_pooled_features_unchanged(data, ref, tmp_path):
    with h5py.File(ref, "r") as f:
        maps = f["maps"]
        assert maps.dtype == np.float16 and maps.shape == (f["labels"].shape[0], 2, 256, 4, 4)
        assert maps.chunks == (1, 1, 256, 4, 4)
        assert np.isfinite(maps[()]).all() and maps[()].astype(np.float32).std() > 0
    store = open_maps(ref)
    assert (store.layer, store.map_views, store.shape) == ("layer3", 2, (256, 4, 4))
    assert store.cache.key_params["maps"] == "layer3"
    plain = tmp_path / "plain.h5"
    run_extract(data, plain, **{k: v for k, v in MAPS.items() if k not in ("maps", "map_views")})
    assert np.array_equal(read_cache(plain).features, read_cache(ref).features)
    assert read_cache(plain).key != store.cache.key


def test_sigkill_then_rerun_gives_the_same_store_bit_for_bit(data, ref, tmp_path):
    out, partial = tmp_path / "m.h5", tmp_path / "m.h5.partial"
    for point in ("maps-shard:2", "shard:3", "cache-tmp"):
        proc = spawn_extract(data, out, env={"FASTALL_TEST_KILL_AT": point}, **MAPS)
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-2000:])
        assert not out.exists() and (partial / "maps").is_dir()
    # a done image whose map file was lost is recomputed, not stored without its map
    lost = sorted((partial / "maps").glob("*.npy"))[0]
    lost.unlink()
    summary = run_extract(data, out, **MAPS)
    assert summary.resumed >= 1 and not partial.exists()
    assert_same_cache(ref, out)


def test_no_room_is_one_line_before_any_work(data, tmp_path, monkeypatch):
    monkeypatch.setattr("fastall.features.mapshards.free_bytes", lambda folder: 1000)
    monkeypatch.setattr("fastall.system.files.free_bytes", lambda folder: 1000)
    with pytest.raises(CacheError, match=r"no room for the maps .* MiB.*--map-views 1") as err:
        run_extract(data, tmp_path / "m.h5", **MAPS)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "m.h5").exists() and not list((tmp_path / "m.h5.partial").glob("batch-*"))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"map_views": 4}, r"--map-views 4 needs --maps and at most --views \(3\)"),
        ({"maps": None, "map_views": 1}, "--map-views 1 needs --maps"),
        ({"layers": "layer3"}, "--maps cuts the plain backbone"),
        ({"backbone": "densenet121"}, "maps are cut from resnet18, resnet50, resnet101"),
        ({"maps": "layer4"}, "layer4"),
    ],
)
def test_refusals(data, tmp_path, settings, message):
    with pytest.raises(FastallError, match=message):
        run_extract(data, tmp_path / "m.h5", **{**MAPS, **settings})
