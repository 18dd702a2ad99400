"""Where a backbone's weights come from: torchvision's multi-weight API (the torch hub cache under TORCH_HOME,
or a download), or a ``.pth``/``.safetensors`` state dict, and how a state dict is checked and loaded into an
architecture. A missing or bad one is a one-line error saying what to do (the first mismatching key)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model_weights

from fastall.errors import WeightsUnavailable
from fastall.system.files import file_kind

DOWNLOAD_TIMEOUT_S = 15.0


def weight_names(name: str) -> list[str]:
    """The torchvision weights of ``name`` (e.g. ``IMAGENET1K_V1``), ``DEFAULT`` first."""
    return ["DEFAULT", *(n for n in get_model_weights(name).__members__ if n != "DEFAULT")]


def fixed_sizes(name: str) -> str:
    """The input sizes of a fixed-size architecture, each with the weights that take it."""
    sizes: dict[int, list[str]] = {}
    for member in get_model_weights(name):
        sizes.setdefault(int(member.meta["min_size"][0]), []).append(member.name)
    sizes.setdefault(224, []).append("none")
    return ", ".join(f"{s} ({', '.join(n)})" for s, n in sorted(sizes.items()))


def named_weights(name: str, weights: str) -> WeightsEnum | None:
    """The torchvision weights ``weights`` names for architecture ``name`` (any case, ``DEFAULT`` too)."""
    return get_model_weights(name).__members__.get(str(weights).upper())


def torchvision_state(name: str, title: str, weights: WeightsEnum) -> tuple[dict[str, torch.Tensor], str]:
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
            f"{name} {weights.name.lower()} weights {what}; or use --weights PATH (a {title} "
            ".pth state dict) or --weights none (random init, tests only)"
        ) from err
    finally:
        socket.setdefaulttimeout(previous)
    return state, f"torchvision:{weights.url}"


def file_state(path: Path, name: str) -> dict:
    """A state dict from ``path`` (``.safetensors``, or a ``.pth`` never unpickled); a folder, FIFO or text
    file is named as what it is."""
    kind = file_kind(path)
    if kind is not None:
        choices = "hub" if ":" in name or "-" in name else ", ".join(weight_names(name))
        what = "weights file not found" if kind == "no such file" else f"is {kind}, not a weights file"
        raise WeightsUnavailable(f"{path}: {what} (for {name} use {choices}, a .pth path or none)")
    if path.suffix == ".safetensors":
        return _safetensors_state(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad weights file
        first = str(err).splitlines()[0].strip() if str(err) else ""
        detail = f" ({first[:160]})" if first and not first.isdigit() else ""
        raise WeightsUnavailable(
            f"{path}: not a PyTorch weights file (a {name} state dict saved with torch.save){detail}"
        ) from err
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"{path}: holds a {type(state).__name__}, expected a state dict")
    return state


def _safetensors_state(path: Path) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        extra = "pip install 'fastall[timm]'"
        raise WeightsUnavailable(f"{path}: .safetensors needs the extra: {extra}") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file is a bad weights file
        first = str(err).splitlines()[0].strip()[:160] if str(err) else type(err).__name__
        raise WeightsUnavailable(f"{path}: not a safetensors weights file ({first})") from err


def check_keys(
    name: str, title: str, state: dict, expected: set[str], origin: str, guesser: Callable | None = None
) -> None:
    """Refuse a state dict whose keys are not the architecture's, naming the first mismatching key."""
    missing, unexpected = sorted(expected - set(state)), [k for k in state if k not in expected]
    if missing or unexpected:
        guess = guesser(state) if guesser else None
        use = f" (it is a {guess} state dict: use --backbone {guess})"
        other = use if guess and guess != name else ""
        first = unexpected[0] if unexpected else missing[0]
        raise WeightsUnavailable(
            f"{origin}: not a {title} state dict{other}: first mismatching key {first!r}; "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}"
        )


def assign_state(model: nn.Module, state: dict, origin: str, title: str) -> None:
    """Load ``state`` into ``model`` (float32 copies, maps channels_last), naming the first misfit tensor."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k, shape in shapes.items():  # in the architecture's order
        if k in state and tuple(state[k].shape) != shape:
            raise WeightsUnavailable(
                f"{origin}: tensor shapes do not fit {title}: first mismatching key {k!r} is "
                f"{list(state[k].shape)} in the file, {list(shape)} in {title}"
            )
    try:
        model.load_state_dict({k: _copy(v) for k, v in state.items()}, assign=True)
    except RuntimeError as err:
        raise WeightsUnavailable(
            f"{origin}: tensor shapes do not fit {title}: {str(err).splitlines()[-1].strip()}"
        ) from err


def _copy(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().float() if t.is_floating_point() else t.detach()
    return t.clone(memory_format=torch.channels_last) if t.dim() == 4 else t.clone()
