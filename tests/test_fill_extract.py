"""`extract --fill` on other backgrounds and layouts: the fill used is in view_params and the key, the
end-to-end path reproduces augmented views, old caches read as black fill."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from extract_helpers import one_thread, run_extract

from fastall.cli import cli
from fastall.data.images import decode_image
from fastall.data.synth import GENERIC_PATIENT_REGEX, synthesize
from fastall.errors import CacheError
from fastall.features.augment import AUTO_LIGHT
from fastall.features.backbone import load_backbone
from fastall.features.cache import cache_key, read_cache
from fastall.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess
from fastall.viewparams import VIEW_PARAM_NAMES

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)
FILL = slice(VIEW_PARAM_NAMES.index("fill"), VIEW_PARAM_NAMES.index("fill_b") + 1)


@pytest.fixture(scope="module")
def light(tmp_path_factory):
    root = tmp_path_factory.mktemp("light")
    synthesize(root, patients_per_class=2, images_per_patient=2, size=48, prelim=False, background="light")
    return root


@pytest.fixture(scope="module")
def light_cache(light, tmp_path_factory):
    out = tmp_path_factory.mktemp("lc") / "c.h5"
    run_extract(light, out, fill="auto")
    return out


def test_auto_fill_on_a_light_background(light_cache):
    cache = read_cache(light_cache)
    assert cache.fill == "auto" and cache.key_params["fill"] == "auto"
    fills = cache.view_params[:, 1:, FILL]
    assert AUTO_LIGHT == "median" and np.all(fills[..., 0] == 0)
    assert fills[..., 1:].min() > 0.5  # the light median border colour, not black
    assert np.all(cache.view_params[:, 1:, VIEW_PARAM_NAMES.index("keep_black")] == 1)


def test_end_to_end_path_reproduces_the_augmented_views(light, light_cache):
    cache = read_cache(light_cache)
    model, _ = load_backbone("none", seed=0)
    images = torch.stack([decode_image(light / p) for p in cache.paths[:4]])
    for view in (1, 2):
        x = preprocess(images, 32, IMAGENET_MEAN, IMAGENET_STD, torch.from_numpy(cache.view_params[:4, view]))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            direct = model(x.contiguous(memory_format=torch.channels_last)).to(torch.float16).numpy()
        assert np.array_equal(direct, cache.features[:4, view])


def test_fill_is_in_the_key(light, light_cache, tmp_path):
    with pytest.raises(CacheError, match='fill: "auto" -> "reflect"'):
        run_extract(light, light_cache, fill="reflect")
    out = tmp_path / "r.h5"
    summary = run_extract(light, out, fill="reflect", views=2)
    cache = read_cache(out)
    assert summary.fills == {"reflect": cache.n_images} and np.all(cache.view_params[:, 1, FILL.start] == 2)
    assert cache.key != read_cache(light_cache).key


def test_black_background_keeps_black_fill(tmp_path):
    root = tmp_path / "d"
    synthesize(root, patients_per_class=2, images_per_patient=1, size=48, prelim=False)
    out = tmp_path / "c.h5"
    summary = run_extract(root, out, views=2)
    cache = read_cache(out)
    assert summary.fill == "auto" and summary.fills == {"black": cache.n_images}
    assert np.all(cache.view_params[:, :, FILL] == 0)


def test_generic_four_classes_through_scan_and_extract(tmp_path):
    root = tmp_path / "g"
    synthesize(
        root,
        layout="generic",
        classes=4,
        patients_per_class=2,
        images_per_patient=2,
        size=40,
        background="smear",
    )
    runner = CliRunner()
    scan = runner.invoke(cli, ["scan", str(root), "--patient-regex", GENERIC_PATIENT_REGEX, "--json"])
    assert scan.exit_code == 0, scan.output
    summary = json.loads(scan.stdout)
    assert summary["class_names"] == ["class0", "class1", "class2", "class3"] and summary["patients"] == 8
    out = tmp_path / "c.h5"
    args = [
        "extract",
        str(root),
        "--out",
        str(out),
        "--views",
        "2",
        "--image-size",
        "32",
        "--weights",
        "none",
        "--device",
        "cpu",
        "--patient-regex",
        GENERIC_PATIENT_REGEX,
        "--fill",
        "auto",
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "filled with colour in" in result.output and "--fill" in result.output
    cache = read_cache(out)
    assert cache.class_names == summary["class_names"] and len(set(cache.patients)) == 8
    assert sorted(set(cache.labels)) == [0, 1, 2, 3]


def test_a_cache_without_fill_columns_reads_as_black(light_cache, tmp_path):
    old = tmp_path / "old.h5"
    old.write_bytes(light_cache.read_bytes())
    with h5py.File(old, "r+") as f:
        params = f["view_params"][()][..., :11]
        del f["view_params"]
        f.create_dataset("view_params", data=params)
        f.attrs["view_param_names"] = json.dumps(list(VIEW_PARAM_NAMES[:11]))
        key_params = json.loads(f.attrs["key_params"])
        key_params.pop("fill")
        f.attrs["key_params"] = json.dumps(key_params, sort_keys=True)
        f.attrs["key"] = cache_key(key_params)
    cache = read_cache(old)
    assert cache.fill == "black" and cache.view_param_names == list(VIEW_PARAM_NAMES)
    assert np.all(cache.view_params[..., 11:] == 0)
    assert np.array_equal(cache.view_params[..., :11], read_cache(light_cache).view_params[..., :11])
