"""The frozen backbone: random init, .pth files, torchvision weights offline, and the weights' identity."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from extract_helpers import one_thread, tiny_tree
from torchvision.models import resnet50

from fastall.cli import cli
from fastall.errors import FastallError, WeightsUnavailable
from fastall.features.backbone import RANDOM_INIT_WARNING, load_backbone, state_dict_sha256

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def full_state() -> dict[str, torch.Tensor]:
    """A complete torchvision ResNet-50 state dict (fc included), deterministic."""
    torch.manual_seed(3)
    return resnet50().state_dict()


def test_random_init_is_frozen_deterministic_and_warns():
    model, info = load_backbone("none", seed=0)
    assert info.name == "resnet50" and info.weights == "none" and len(info.sha256) == 64
    assert info.warnings == [RANDOM_INIT_WARNING] and "not meaningful" in info.warnings[0]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 2048)
    assert load_backbone("none", seed=0)[1].sha256 == info.sha256
    assert load_backbone("none", seed=1)[1].sha256 != info.sha256


def test_sha256_is_layout_and_order_independent(full_state):
    reordered = dict(reversed(list(full_state.items())))
    cl = {
        k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
        for k, v in reordered.items()
    }
    assert state_dict_sha256(cl) == state_dict_sha256(full_state)


@pytest.mark.parametrize("wrap", ["plain", "without_fc", "state_dict_key", "module_prefix"])
def test_pth_variants_load_to_the_same_weights(tmp_path, full_state, wrap):
    state = dict(full_state)
    if wrap == "without_fc":
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    blob = {"state_dict": state, "epoch": 3} if wrap == "state_dict_key" else state
    if wrap == "module_prefix":
        blob = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "w.pth"
    torch.save(blob, path)
    model, info = load_backbone(str(path))
    reference = {k: v for k, v in full_state.items() if not k.startswith("fc.")}
    assert info.weights == "file" and info.warnings == []
    assert info.sha256 == state_dict_sha256(reference)
    assert torch.equal(model.conv1.weight, full_state["conv1.weight"])


def test_bad_weight_files_give_one_line_errors(tmp_path, full_state):
    missing = tmp_path / "nope.pth"
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": full_state["conv1.weight"]}, wrong)
    shapes = tmp_path / "shapes.pth"
    torch.save({**full_state, "conv1.weight": torch.zeros(3, 3)}, shapes)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": object()}, pickled)
    for path, words in [
        (missing, "not found"),
        (garbage, "not a PyTorch weights file"),
        (wrong, "missing keys"),
        (shapes, "shapes"),
        (pickled, "not a PyTorch weights file"),
        (tmp_path, "is a folder, not a weights file"),
    ]:
        with pytest.raises(WeightsUnavailable) as err:
            load_backbone(str(path))
        message = str(err.value)
        assert str(path) in message and words in message and "\n" not in message
        assert err.value.exit_code == 2


def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there: offline, at once
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)


def test_offline_with_empty_torch_home_names_the_checkpoint(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    with pytest.raises(WeightsUnavailable) as err:
        load_backbone("imagenet1k_v1")
    message = str(err.value)
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert "resnet50-0676ba61.pth" in message and str(folder) in message
    assert "--weights PATH" in message and "--weights none" in message
    assert err.value.exit_code == 2 and "\n" not in message
    assert not (folder / "resnet50-0676ba61.pth").exists()


def test_corrupt_cached_checkpoint_is_named(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "resnet50-11ad3fa6.pth").write_bytes(b"\0" * 100)
    with pytest.raises(WeightsUnavailable, match="unreadable"):
        load_backbone("imagenet1k_v2")


def test_cli_offline_exit_code_2(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    data = tiny_tree(tmp_path / "data")
    args = ["extract", str(data), "--out", str(tmp_path / "c.h5"), "--device", "cpu"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "Error:" in result.output and "resnet50-0676ba61.pth" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "c.h5.lock").exists()


def test_build_backbone_is_the_one_builder(full_state):
    from fastall.features.backbone import build_backbone

    built = build_backbone("resnet50", full_state, "test")
    assert not built.training and not any(p.requires_grad for p in built.parameters())
    assert built.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    without_fc = {k: v for k, v in full_state.items() if not k.startswith("fc.")}
    assert state_dict_sha256(built.state_dict()) == state_dict_sha256(without_fc)
    with pytest.raises(FastallError, match="unknown backbone 'vit'"):
        build_backbone("vit", full_state, "test")
    with pytest.raises(WeightsUnavailable, match="not a ResNet-50 state dict"):
        build_backbone("resnet50", {"conv1.weight": full_state["conv1.weight"]}, "test")
