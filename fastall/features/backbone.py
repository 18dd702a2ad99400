"""The frozen backbone: torchvision ResNet-50 without ``fc``, giving 2048-d pooled features.

Weights come from torchvision's own weights API (the torch hub cache under TORCH_HOME, or a download),
from a ``.pth`` state dict, or from a deterministic random init (``none``, for tests and demos). Their
identity is the sha256 of the loaded state dict, recorded in every cache.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50

from fastall.errors import FastallError, WeightsUnavailable
from fastall.system.files import file_kind

FEATURE_DIM = 2048
TORCHVISION_WEIGHTS = {
    "imagenet1k_v1": ResNet50_Weights.IMAGENET1K_V1,
    "imagenet1k_v2": ResNet50_Weights.IMAGENET1K_V2,
}
DOWNLOAD_TIMEOUT_S = 15.0
RANDOM_INIT_WARNING = (
    "--weights none: the backbone is randomly initialised; features are only good for "
    "tests and demos, results on real data are not meaningful"
)


@dataclass
class BackboneInfo:
    name: str
    weights: str
    sha256: str
    source: str
    feature_dim: int = FEATURE_DIM
    warnings: list[str] = field(default_factory=list)


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _empty_model() -> nn.Module:
    with torch.device("meta"):
        model = resnet50()
    model.fc = nn.Identity()
    return model


def _strip(state: dict, origin: str) -> dict[str, torch.Tensor]:
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsUnavailable(
                f"{origin}: entry {name!r} is not a tensor; expected a ResNet-50 state dict"
            )
        name = name.removeprefix("module.")
        if not name.startswith("fc."):
            out[name] = value
    return out


def _copy(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().float() if t.is_floating_point() else t.detach()
    return t.clone(memory_format=torch.channels_last) if t.dim() == 4 else t.clone()


def build_backbone(name: str, state: dict, origin: str = "state dict") -> nn.Module:
    """The one place a backbone is built: ``name`` (``resnet50``) from a state dict (``fc`` entries and a
    ``module.`` prefix dropped): eval mode, frozen, channels_last, on the CPU."""
    if name != "resnet50":
        raise WeightsUnavailable(f"{origin}: unknown backbone {name!r} (fastall builds resnet50)")
    state = _strip(state, origin)
    model = _empty_model()
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise WeightsUnavailable(
            f"{origin}: not a ResNet-50 state dict: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    try:
        model.load_state_dict({k: _copy(v) for k, v in state.items()}, assign=True)
    except RuntimeError as err:
        raise WeightsUnavailable(
            f"{origin}: tensor shapes do not fit ResNet-50: {str(err).splitlines()[-1].strip()}"
        ) from None
    return model.eval().requires_grad_(False).to(memory_format=torch.channels_last)


@functools.lru_cache(maxsize=2)
def _random_state(seed: int) -> tuple[dict[str, torch.Tensor], str]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = resnet50()
    model.fc = nn.Identity()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return state, state_dict_sha256(state)


def _torchvision_state(name: str) -> tuple[dict[str, torch.Tensor], str]:
    weights = TORCHVISION_WEIGHTS[name]
    file_name = os.path.basename(urlparse(weights.url).path)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        state = weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as err:  # noqa: BLE001 - offline, refused, corrupt file: all mean "not available"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        cached = folder / file_name
        what = (
            f"cached file {cached} is unreadable ({reason})"
            if cached.is_file()
            else f"not cached and cannot be downloaded ({reason}): put {file_name} into {folder}"
        )
        raise WeightsUnavailable(
            f"ResNet-50 {name} weights {what}; or use --weights PATH (a ResNet-50 .pth state dict) or "
            "--weights none (random init, tests only)"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return state, f"torchvision:{weights.url}"


def _file_state(path: Path) -> dict:
    kind = file_kind(path)
    if kind is not None:
        what = "weights file not found" if kind == "no such file" else f"is {kind}, not a weights file"
        raise WeightsUnavailable(f"{path}: {what} (use imagenet1k_v1, imagenet1k_v2, a .pth file or none)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad weights file
        first = str(err).splitlines()[0].strip() if str(err) else ""
        detail = f" ({first[:160]})" if first and not first.isdigit() else ""
        raise WeightsUnavailable(
            f"{path}: not a PyTorch weights file (a ResNet-50 state dict saved with torch.save){detail}"
        ) from None
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"{path}: holds a {type(state).__name__}, expected a state dict")
    return state


def load_backbone(weights: str = "imagenet1k_v1", seed: int = 0) -> tuple[nn.Module, BackboneInfo]:
    """ResNet-50 with ``fc = Identity``: eval mode, frozen, channels_last, on the CPU."""
    warnings: list[str] = []
    key = weights.lower()
    sha = None
    if key == "none":
        (state, sha), name, source = _random_state(seed), "none", f"random-init seed={seed}"
        warnings.append(RANDOM_INIT_WARNING)
    elif key in TORCHVISION_WEIGHTS:
        (state, source), name = _torchvision_state(key), key
    else:
        path = Path(weights).expanduser()
        state, name, source = _file_state(path), "file", str(path.resolve())
    model = build_backbone("resnet50", state, source)
    sha = sha or state_dict_sha256(model.state_dict())
    return model, BackboneInfo(name="resnet50", weights=name, sha256=sha, source=source, warnings=warnings)


# Grad-CAM's target layer per backbone: a module path inside the model ``load_backbone`` returns (its last
# convolutional stage, whose activations keep a spatial layout). A new backbone declares its own entry.
GRADCAM_LAYERS = {"resnet50": "layer4"}


def target_layer(model: nn.Module, name: str = "resnet50") -> nn.Module:
    """The module of backbone ``name`` (as recorded in key_params["backbone"]) whose maps Grad-CAM weighs."""
    if name not in GRADCAM_LAYERS:
        raise FastallError(
            f"backbone {name!r} declares no Grad-CAM layer (known: {', '.join(sorted(GRADCAM_LAYERS))})"
        )
    try:
        return model.get_submodule(GRADCAM_LAYERS[name])
    except AttributeError:
        raise FastallError(f"backbone {name!r} has no module {GRADCAM_LAYERS[name]!r}") from None
