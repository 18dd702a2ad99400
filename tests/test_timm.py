"""Foundation encoders through timm (random init; ViTs at 224 px on 4 images) and multi-layer CNN features:
the cache against timm's / torchvision's own forward, the end-to-end path, the weights' refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from extract_helpers import one_thread

from fastall.cli import cli
from fastall.data.images import decode_image
from fastall.errors import FastallError
from fastall.features.backbone import load_backbone
from fastall.features.cache import read_cache
from fastall.features.extract import extract
from fastall.head import Head
from fastall.inference.model import LeukemiaClassifier
from fastall.preprocess import preprocess
from fastall.training.train_head import train_head

timm = pytest.importorskip("timm", reason="the timm extra is not installed: pip install -e '.[timm]'")
_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)
VIT = "vit_small_patch14_dinov2"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from fastall.data.synth import synthesize

    root = tmp_path_factory.mktemp("timm-data")
    synthesize(root, patients_per_class=2, images_per_patient=1, size=64, prelim=False)
    return root


def _extract(data, out, **kwargs):
    args = {"views": 1, "weights": "none", "device": "cpu", "workers": 0}
    return extract(data, out, **{**args, "precision": "fp32", **kwargs})


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory):
    """A random-init timm ViT-S/14 at 224 saved as safetensors, as DinoBloom-S's hub file is (LayerScale at 1,
    not DINOv2's 1e-5: else the random blocks barely act and every image gives nearly the same features)."""
    from safetensors.torch import save_file

    torch.manual_seed(7)
    model = timm.create_model(VIT, num_classes=0, img_size=224, init_values=1.0)
    path = tmp_path_factory.mktemp("w") / "dinobloom-s.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def caches(tree, vit_weights, tmp_path_factory):
    base = tmp_path_factory.mktemp("timm-caches")
    out = {
        "dinobloom": base / "dinobloom.h5",
        "layer3": base / "r50_l3.h5",
        "resnet50": base / "r50.h5",
    }
    _extract(tree, out["dinobloom"], backbone="dinobloom-s", weights=str(vit_weights))
    _extract(tree, out["layer3"], backbone="resnet50", layers="layer3", image_size=64)
    _extract(tree, out["resnet50"], backbone="resnet50", image_size=64)
    return out


def _pixels(fc, tree, size, mean, std):
    images = torch.stack([decode_image(tree / p) for p in fc.paths.astype(str)])
    return preprocess(images, size, mean, std)


def _pool(tokens: torch.Tensor, pool: str, prefix: int) -> torch.Tensor:
    cls, mean = tokens[:, 0], tokens[:, prefix:].mean(1)
    return {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], 1)}[pool]


def _cos(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a, np.float32)), torch.as_tensor(np.asarray(b, np.float32))
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).min())


@pytest.mark.parametrize(
    ("backbone", "weights", "pool", "dim"),
    [(f"timm:{VIT}", "none", "cls+mean", 768), ("dinobloom-s", "file", None, 384)],
)
def test_vit_cache_equals_timms_forward(backbone, weights, pool, dim, tree, caches, vit_weights, tmp_path):
    if weights == "file":
        cache = caches["dinobloom"]
    else:
        cache = tmp_path / "vit.h5"
        _extract(tree, cache, backbone=backbone, pool=pool, image_size=224)
    fc = read_cache(cache)
    kp = fc.key_params
    assert fc.dim == dim and kp["backbone"] == backbone and kp["image_size"] == 224
    assert kp["pool"] == (pool or "cls") and "layers" not in kp
    assert fc.attrs["transform_vs_timm"].startswith("timm: bicubic")
    torch.manual_seed(0 if weights == "none" else 7)
    ref = timm.create_model(VIT, num_classes=0, img_size=224).eval()
    if weights == "file":
        from safetensors.torch import load_file

        ref = timm.create_model(VIT, num_classes=0, img_size=224, init_values=1.0).eval()
        ref.load_state_dict(load_file(str(vit_weights)))
        assert kp["weights"] == "file" and len(kp["weights_sha256"]) == 64
    x = _pixels(fc, tree, 224, kp["mean"], kp["std"])
    with torch.no_grad():
        expected = _pool(ref.forward_features(x), pool or "cls", ref.num_prefix_tokens)
    assert _cos(fc.features[:, 0], expected) >= 0.999


def test_layer3_equals_torchvisions_resnet50_cut_after_layer3(tree, caches):
    fc = read_cache(caches["layer3"])
    assert fc.dim == 1024 and fc.key_params["layers"] == ["layer3"] and "pool" not in fc.key_params
    plain = read_cache(caches["resnet50"], load_features=False)
    assert "layers" not in plain.key_params and "pool" not in plain.key_params  # old keys unchanged
    assert plain.key_params["weights_sha256"] == fc.key_params["weights_sha256"]  # the same weights
    full, _ = load_backbone("none", backbone="resnet50")
    ref = torchvision.models.resnet50()
    ref.fc = torch.nn.Identity()
    ref.load_state_dict(full.state_dict())
    cut = torch.nn.Sequential(*list(ref.children())[:7], torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    x = _pixels(fc, tree, 64, fc.key_params["mean"], fc.key_params["std"])
    with torch.no_grad():
        assert _cos(fc.features[:, 0], cut.eval()(x)) >= 0.999


def test_layer3_and_layer4_concatenate_shallow_to_deep():
    both, info = load_backbone("none", backbone="resnet50", layers="layer4,layer3")
    full, _ = load_backbone("none", backbone="resnet50")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = both(x)
    assert info.layers == ("layer3", "layer4") and info.feature_dim == out.shape[1] == 3072
    assert torch.allclose(out[:, 1024:], full(x), atol=1e-5)


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(caches, tmp_path_factory):
    """A trained head per family: a ViT (DinoBloom-S) and ResNet-50 cut after layer3."""
    base = tmp_path_factory.mktemp("timm-runs")
    for which in ("dinobloom", "layer3"):
        train_head(caches[which], base / which, folds=2, test="none", epochs=5, device="cpu", progress=False)
    return {which: base / which for which in ("dinobloom", "layer3")}


@pytest.mark.parametrize("which", ["dinobloom", "layer3"])
def test_end_to_end_path(which, runs, tree, tmp_path):
    """verify -> predict (TorchScript) -> export (torch, ONNX) -> predict (export), explain, evaluate."""
    from fastall.inference.verify import verify_run

    run = runs[which]
    report = verify_run(run, images=4)
    assert report.passed, report.to_dict()
    result = _cli("predict", run, tree, "--out", tmp_path / "p.csv", "--workers", "0", "--backend", "jit")
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 5
    result = _cli("export", run, "--out", tmp_path / "m.pt", "--precision", "fp32", "--images", "4")
    assert result.exit_code == 0, result.output
    result = _cli("predict", tmp_path / "m.pt", tree, "--out", tmp_path / "pe.csv", "--workers", "0")
    assert result.exit_code == 0, result.output
    pytest.importorskip("onnxruntime")
    result = _cli("export", run, "--out", tmp_path / "m.onnx", "--format", "onnx", "--images", "4")
    assert result.exit_code == 0, result.output
    pytest.importorskip("pytorch_grad_cam")
    result = _cli("explain", run, tree, "--out", tmp_path / "cam")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "cam" / "explain.json").read_text())
    layer = {"dinobloom": "dinobloom-s.model.blocks.11.norm1", "layer3": "resnet50.model.layer3"}[which]
    assert meta["layer"] == layer and meta["images"] == 4
    maps = [np.load(tmp_path / "cam" / f) for f in sorted(p.name for p in (tmp_path / "cam").glob("*.npy"))]
    assert all(m.shape == (224 if which == "dinobloom" else 64,) * 2 for m in maps)
    assert any(float(m.max()) > 0 for m in maps)
    if which == "layer3":  # evaluate loads the model as predict does; its cost is the bootstrap
        result = _cli("evaluate", run, tree, "--out", tmp_path / "ev", "--no-report")
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("which", ["dinobloom", "layer3"])
def test_explain_sanity_checks_per_family(which, runs, tree):
    """Adebayo et al.'s checks as docs/explain.md runs them: a fresh random head changes the maps (mean rank
    correlation < 0.5), the same call gives the same maps, and the frozen weights stay untouched."""
    pytest.importorskip("pytorch_grad_cam")
    from scipy.stats import spearmanr

    from fastall.data.loader import iter_batches
    from fastall.data.walk import find_images
    from fastall.inference.explain import explain_batch, load_explainable

    model = load_explainable(runs[which])
    paths, _ = find_images([tree])
    images = next(iter(iter_batches(paths, model.image_size, 4))).images
    before = {k: v.clone() for k, v in model.state_dict().items()}
    maps = explain_batch(model, images, target="all").cams
    assert np.array_equal(maps, explain_batch(model, images, target="all").cams)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for seed in range(2):
        torch.manual_seed(seed)
        head = Head(**model.head.config())
        head.set_standardization(model.head.mean, model.head.std)
        random = LeukemiaClassifier(
            model.backbone, head, image_size=model.image_size, class_names=model.class_names,
            mean=model.mean, std=model.std, provenance=model.provenance,
        )  # fmt: skip
        other = explain_batch(random, images, target="all").cams
        rho = [spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(maps, other, strict=True)]
        assert np.nanmean(rho) < 0.5, (seed, rho)


def test_compare_a_dinobloom_cache_with_a_resnet50_cache(caches, tmp_path):
    result = _cli(
        "compare", caches["dinobloom"], caches["resnet50"], "--out", tmp_path / "cmp", "--folds", "2",
        "--test", "none", "--epochs", "1", "--preset", "paper", "--resamples", "100", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    header = (tmp_path / "cmp" / "compare.csv").read_text().splitlines()[0].split(",")
    assert "probe_oof_auc" in header and "dinobloom-s[cls]" in result.output and "resnet50" in result.output


def test_compare_tells_the_depths_apart(caches, tmp_path):
    result = _cli(
        "compare", caches["layer3"], caches["resnet50"], "--out", tmp_path / "cmp", "--folds", "2",
        "--test", "none", "--epochs", "1", "--preset", "paper", "--resamples", "100", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "resnet50[layer3]" in result.output


def test_offline_hub_is_exit_2_with_the_file_to_fetch(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    result = _cli(
        "extract", tree, "--out", tmp_path / "c.h5", "--backbone", "dinobloom-s", "--weights", "hub"
    )
    assert result.exit_code == 2, result.output
    said = [line for line in result.output.splitlines() if line.strip()]
    lines = [line for line in said if not line.startswith(("Warning", "Hint"))]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    url = "https://huggingface.co/1aurent/vit_small_patch14_224.dinobloom/resolve/main/model.safetensors"
    assert url in lines[0] and "--weights PATH" in lines[0] and str(tmp_path / "hf" / "hub") in lines[0]


def test_weights_of_the_wrong_architecture_name_the_first_mismatching_key(vit_weights, tree, tmp_path):
    with pytest.raises(FastallError, match=r"first mismatching key 'cls_token' is \[1, 1, 384\]") as err:
        load_backbone(str(vit_weights), backbone="timm:vit_base_patch14_dinov2", image_size=224)
    assert err.value.exit_code == 2
    resnet, _ = load_backbone("none", backbone="resnet18")
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")
    result = _cli("extract", tree, "--out", tmp_path / "c.h5", "--backbone", "dinobloom-s", "--weights",
                  tmp_path / "r18.pth")  # fmt: skip
    assert result.exit_code == 2 and "first mismatching key 'conv1.weight'" in result.output, result.output
    with pytest.raises(FastallError, match="first mismatching key 'blocks.0.attn.proj.bias'"):  # file order
        load_backbone(str(vit_weights), backbone="resnet50")


@pytest.mark.parametrize(
    ("name", "dim", "pool"),
    [("dinobloom-s", 384, "cls"), ("dinobloom-b", 768, "cls"), ("dinobloom-l", 1024, "cls"),
     ("dinobloom-g", 1536, "cls"), ("dinov2-s", 768, "cls+mean"), ("dinov2-b", 1536, "cls+mean")],
)  # fmt: skip
def test_presets_map_to_their_architecture(name, dim, pool):
    from fastall.features import timm_models as tm

    t = tm.target(name)
    model = tm.TimmEncoder(tm.create(t, 224, meta=True), t.pool)
    assert model.pool == pool and t.image_size == 224 and tm.PRESETS[name].patch == 14
    assert model.model.patch_embed.patch_size == (14, 14) and t.hub
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224, device="meta")).shape == (1, dim)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "resnet50", "pool": "cls"}, "token pooling applies to timm ViTs"),
        ({"backbone": "vit_b_16", "layers": "layer3"}, "vit_b_16 has no declared stages"),
        ({"backbone": "resnet50", "layers": "layer5"}, "give distinct stage names"),
        ({"backbone": "timm:resnet18", "pool": "mean"}, "only ViTs pool tokens"),
        ({"backbone": "timm:no_such_net"}, "no timm architecture 'no_such_net'"),
    ],
)
def test_bad_choices_are_one_line_refusals(kwargs, message):
    with pytest.raises(FastallError, match=message):
        load_backbone("none", **kwargs)


def test_batch_size_is_sized_from_free_memory():
    from fastall.features.loop import auto_batch_size, fit_batch

    assert auto_batch_size(torch.nn.Identity(), torch.device("cpu"), 224, torch.autocast("cpu")) == 32
    mib = 2**20
    assert fit_batch(10 * mib, 80_000 * mib) == 256  # capped
    assert fit_batch(100 * mib, 1000 * mib) == 4  # 0.6 * 1000 / 100 = 6 -> 4
    with pytest.raises(FastallError, match="needs ~3000 MiB per image and 2000 MiB are free"):
        fit_batch(3000 * mib, 2000 * mib)


def test_bench_times_a_timm_encoder():
    args = ["bench", "--backbone", "dinobloom-s", "--device", "cpu", "--batch-sizes", "1", "--images", "2"]
    result = _cli(
        *args, "--image-size", "56", "--iters", "2", "--threads", "1", "--backend", "eager", "--json"
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["backbone"] == "dinobloom-s" and "DinoBloom-S" in out["model"] and out["image_size"] == 56
    assert out["latency_batch1"]["end_to_end"]["p50_ms"] > 0


def test_hub_weights_come_from_the_hugging_face_cache(vit_weights, tmp_path, monkeypatch):
    """``--weights hub`` offline with the file in the HF cache (as `huggingface-cli download` leaves it)."""
    import huggingface_hub.constants as hf

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--1aurent--vit_small_patch14_224.dinobloom"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model.safetensors").write_bytes(vit_weights.read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _, hub = load_backbone("hub", backbone="dinobloom-s")
    _, local = load_backbone(str(vit_weights), backbone="dinobloom-s")
    assert hub.weights == "hub" and hub.source == "hf-hub:1aurent/vit_small_patch14_224.dinobloom"
    assert hub.sha256 == local.sha256 and hub.feature_dim == 384 and hub.pool == "cls"
