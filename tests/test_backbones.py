"""Backbones beyond ResNet-50: the registry, extract per backbone, the end-to-end model against its cache,
the input-size rules, and caches written before the choice existed."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from e2e_helpers import shared_run
from extract_helpers import one_thread

from fastall.cli import cli
from fastall.errors import FastallError
from fastall.features.backbone import (
    BACKBONES,
    _drop_classifier,
    _feature_dim,
    _skeleton,
    load_backbone,
)
from fastall.features.cache import cache_key, read_cache
from fastall.features.extract import extract
from fastall.features.gradcam import gradcam_nchw, target_layer
from fastall.inference.artifacts import load_run
from fastall.inference.verify import verify_run
from fastall.training.train_head import train_head

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)
SMALL = ["resnet18", "mobilenet_v3_large", "efficientnet_b0"]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_registry_matches_the_model(name):
    """Declared dimension = pooled features = the Grad-CAM layer's channels (what explain standardises)."""
    spec = BACKBONES[name]
    assert _feature_dim(spec) == spec.dim
    model = _drop_classifier(_skeleton(name), spec)
    seen = []
    target_layer(model, name).register_forward_hook(lambda _m, _i, out: seen.append(out))
    device = next(model.parameters()).device  # meta, except regnet (built for real)
    with torch.no_grad():
        features = model.eval()(torch.zeros(1, 3, 224, 224, device=device))
    assert features.shape == (1, spec.dim)
    grid = gradcam_nchw(model, name, seen[0])
    assert grid.dim() == 4 and grid.shape[:2] == (1, spec.dim)


def test_gradcam_tokens_are_laid_out_on_their_grid():
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    vit = torch.nn.Identity()
    grid = gradcam_nchw(vit, "vit_b_16", tokens)
    assert grid.shape == (2, 3, 2, 2)
    assert torch.equal(grid[1, :, 1, 0], tokens[1, 3])
    assert gradcam_nchw(vit, "resnet18", tokens) is tokens


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from fastall.data.synth import synthesize

    root = tmp_path_factory.mktemp("bb-data")
    synthesize(root, patients_per_class=2, images_per_patient=3, size=48, prelim=False)
    return root


def _extract(data, out, **kwargs):
    args = {"views": 2, "weights": "none", "device": "cpu", "workers": 0, "amp": False}
    return extract(data, out, **{**args, **kwargs})


@pytest.mark.parametrize("name", SMALL)
def test_extract_train_verify_per_backbone(name, tree, tmp_path):
    cache = tmp_path / f"{name}.h5"
    _extract(tree, cache, backbone=name, image_size=32)
    fc = read_cache(cache)
    spec = BACKBONES[name]
    assert fc.features.shape[2] == spec.dim and fc.dim == spec.dim and fc.backbone == name
    kp = fc.key_params
    assert kp["backbone"] == name and kp["weights"] == "none" and kp["feature_dim"] == spec.dim
    assert kp["mean"] == [0.485, 0.456, 0.406] and kp["image_size"] == 32
    assert fc.attrs["backbone_params"] > 1e6 and fc.attrs["extract_s_per_image"] > 0
    assert float(np.abs(fc.features[:, 0].astype(np.float32)).std(0).mean()) > 0  # not a constant vector
    run = tmp_path / "run"
    train_head(cache, run, folds=2, test="none", epochs=1, device="cpu", progress=False)
    assert torch.load(run / "head.pt", weights_only=True)["head_config"]["in_features"] == spec.dim
    report = verify_run(run, images=6)
    assert report.passed, report.to_dict()
    assert load_run(run).backbone.get_submodule(spec.classifier_attr).__class__ is torch.nn.Identity


def test_a_non_resnet_run_exports_and_predicts(tree, tmp_path):
    cache = tmp_path / "m.h5"
    _extract(tree, cache, backbone="mobilenet_v3_large", image_size=32)
    train_head(cache, tmp_path / "run", folds=2, test="none", epochs=1, device="cpu", progress=False)
    runner = CliRunner()
    result = runner.invoke(cli, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 0, result.output
    args = ["predict", str(tmp_path / "m.pt"), str(tree), "--out", str(tmp_path / "p.csv"), "--workers", "0"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (
        len((tmp_path / "p.csv").read_text().splitlines())
        == read_cache(cache, load_features=False).n_images + 1
    )


def test_vit_at_its_fixed_size_and_refused_at_another(tmp_path):
    from fastall.data.synth import synthesize

    synthesize(tmp_path / "d", patients_per_class=2, images_per_patient=1, size=64, prelim=False)
    cache = tmp_path / "vit.h5"
    with pytest.raises(FastallError, match=r"takes exactly 224 px .*384 \(IMAGENET1K_SWAG_E2E_V1\)"):
        _extract(tmp_path / "d", cache, backbone="vit_b_16", image_size=96, views=1)
    summary = _extract(tmp_path / "d", cache, backbone="vit_b_16", views=1)
    fc = read_cache(cache)
    assert summary.images <= 4 and fc.dim == 768 and fc.key_params["image_size"] == 224
    train_head(cache, tmp_path / "run", folds=2, test="none", epochs=1, device="cpu", progress=False)
    report = verify_run(tmp_path / "run", images=4)
    assert report.passed, report.to_dict()


def test_weights_names_of_each_architecture(monkeypatch, tmp_path):
    """Enum names in any case, DEFAULT resolved to its member; offline, the error names that file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "th" / "hub" / "checkpoints"
    for backbone, weights, file_name in [
        ("resnet18", "DEFAULT", "resnet18-f37072fd.pth"),
        ("vit_b_16", "imagenet1k_swag_linear_v1", "vit_b_16_lc_swag-4e70ced5.pth"),
        ("resnet50", "imagenet1k_v2", "resnet50-11ad3fa6.pth"),
        ("efficientnet_b0", "IMAGENET1K_V1", "efficientnet_b0_rwightman-7f5810bc.pth"),
    ]:
        with pytest.raises(FastallError) as err:
            load_backbone(weights, backbone=backbone)
        assert f"put {file_name} into {folder}" in str(err.value) and err.value.exit_code == 2
    with pytest.raises(FastallError, match=r"for resnet18 use DEFAULT, IMAGENET1K_V1, a \.pth path or none"):
        load_backbone("IMAGENET1K_V9", backbone="resnet18")


def test_weights_of_another_architecture_are_named(tmp_path):
    model, _ = load_backbone("none", backbone="resnet18")
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(FastallError, match="not a ResNet-50 state dict .it is a resnet18 state dict"):
        load_backbone(str(tmp_path / "r18.pth"), backbone="resnet50")
    _, info = load_backbone(str(tmp_path / "r18.pth"), backbone="resnet18")
    assert info.weights == "file" and info.feature_dim == 512


def _as_old_cache(src, dest):
    """A copy of ``src`` as fastall wrote it before backbones had names: no backbone key, no new attrs."""
    dest.write_bytes(src.read_bytes())
    with h5py.File(dest, "r+") as f:
        kp = json.loads(f.attrs["key_params"])
        kp.pop("backbone")
        f.attrs["key_params"] = json.dumps(kp, sort_keys=True)
        f.attrs["key"] = cache_key(kp)
        for name in ("backbone", "backbone_params", "extract_s_per_image"):
            f.attrs.pop(name, None)


def test_old_caches_read_as_resnet50(tmp_path_factory, tmp_path):
    e2e = shared_run(tmp_path_factory)
    old = tmp_path / "old.h5"
    _as_old_cache(e2e.cache, old)
    fc = read_cache(old, load_features=False)
    assert "backbone" not in fc.key_params and fc.backbone == "resnet50"
    train_head(old, tmp_path / "run", folds=2, test="none", epochs=1, device="cpu", progress=False)
    model = load_run(tmp_path / "run")
    assert model.head.in_features == 2048 and type(model.backbone).__name__ == "ResNet"
    assert verify_run(tmp_path / "run", images=4).passed


def test_bench_times_another_backbone():
    args = [
        "bench",
        "--backbone",
        "mobilenet_v3_large",
        "--device",
        "cpu",
        "--batch-sizes",
        "1",
        "--images",
        "2",
    ]
    args += ["--image-size", "32", "--iters", "2", "--threads", "1", "--backend", "eager", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["backbone"] == "mobilenet_v3_large" and "MobileNetV3-Large" in out["model"]
    assert out["image_size"] == 32 and out["latency_batch1"]["end_to_end"]["p50_ms"] > 0


@pytest.mark.parametrize(("name", "size"), [("mobilenet_v3_large", 64), ("vit_b_16", 224)])
def test_explain_maps_every_kind_of_layer(name, size):
    """Grad-CAM through the declared layer: a CNN's feature map, and ViT's tokens laid out on their grid."""
    from fastall.inference.bench import random_model
    from fastall.inference.explain import explain_batch

    model = random_model(size, backbone=name)
    model.provenance["key_params"] = {"backbone": name}
    images = (torch.rand(2, 3, size, size) * 255).to(torch.uint8)
    with torch.inference_mode():
        reference = torch.softmax(model(images), 1).numpy()
    maps = explain_batch(model, images)
    assert maps.cams.shape == (2, size, size) and np.isfinite(maps.cams).all()
    assert all(cam.max() > cam.min() for cam in maps.cams)  # a map, not a constant
    np.testing.assert_allclose(maps.probs, reference, atol=1e-5)  # the hook leaves the model's values alone


def test_the_v0_1_fixture_reads_as_resnet50():
    from pathlib import Path

    fc = read_cache(Path(__file__).parent / "fixtures" / "v0_1" / "cache.h5", load_features=False)
    assert fc.backbone == "resnet50" and fc.dim == 2048 and "backbone_params" not in fc.attrs


def test_a_saved_int8_state_with_linear_layers_reloads_to_the_same_model():
    """Backbones with Linear layers (ConvNeXt, Swin, ViT): an exported int8 state is a plain dict."""
    from fastall.inference.runtime import quantize_int8

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    ).eval()
    x = torch.randn(8, 3, 16, 16)
    calibrated = quantize_int8(net, x[:1], calibration=x)
    saved = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in calibrated.state_dict().items()}
    reloaded = quantize_int8(net, x[:1], state=saved)
    with torch.no_grad():
        assert torch.equal(reloaded(x), calibrated(x))
