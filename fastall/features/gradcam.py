"""Where Grad-CAM looks in each backbone: the target layer, and pytorch-grad-cam's ``reshape_transform`` for a
layer that gives tokens ``[B, prefix + H*W, C]`` (a ViT) rather than a map ``[B, C, H, W]``.

A torchvision backbone declares its layer in the registry (``BackboneSpec.gradcam_layer``); a wrapped one
(a timm encoder, a CNN cut at ``--layers``) names it itself (``gradcam_path``). The layer's channels are the
last ``C`` of the pooled features (the deepest stage of a cut CNN, the patch-token mean of ``cls+mean``), so
`fastall explain` can standardise them with the head's statistics.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from fastall.errors import FastallError
from fastall.features.backbone import BACKBONES, DEFAULT_BACKBONE
from fastall.features.timm_models import tokens_to_grid

GRADCAM_LAYERS = {name: spec.gradcam_layer for name, spec in BACKBONES.items()}


def gradcam_path(model: nn.Module, name: str = DEFAULT_BACKBONE) -> str:
    """The module path (inside ``model``) of the layer Grad-CAM weighs."""
    declared = getattr(model, "gradcam_path", None)
    if callable(declared):
        return str(declared())
    if name not in GRADCAM_LAYERS:
        raise FastallError(
            f"backbone {name!r} declares no Grad-CAM layer (known: {', '.join(sorted(GRADCAM_LAYERS))})"
        )
    return GRADCAM_LAYERS[name]


def target_layer(model: nn.Module, name: str = DEFAULT_BACKBONE) -> nn.Module:
    """The module of backbone ``name`` (as recorded in key_params["backbone"]) whose maps Grad-CAM weighs."""
    path = gradcam_path(model, name)
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise FastallError(f"backbone {name!r} has no module {path!r}") from None


def gradcam_reshape(model: nn.Module, name: str = DEFAULT_BACKBONE) -> Callable | None:
    """pytorch-grad-cam's ``reshape_transform`` for the target layer (None: it gives maps already)."""
    own = getattr(model, "reshape_transform", None)
    if callable(own) and getattr(model, "tokens", False):
        return own
    spec = BACKBONES.get(name)
    if spec is not None and spec.gradcam_layout == "tokens" and not hasattr(model, "gradcam_path"):
        return functools.partial(tokens_to_grid, prefix=1)
    return None


def gradcam_nchw(model: nn.Module, name: str, activation: torch.Tensor) -> torch.Tensor:
    """The target layer's output as ``[B, C, H, W]`` (tokens laid out on their grid)."""
    reshape = gradcam_reshape(model, name)
    return activation if reshape is None else reshape(activation)
