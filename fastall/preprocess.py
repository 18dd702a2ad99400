"""The one preprocessing function shared by `extract` and the end-to-end model.

uint8 RGB -> resize (bilinear, antialias, whole image, no crop) -> float in [0, 1] -> [augment] -> ImageNet
normalisation. Workers may run :func:`resize_uint8` early; :func:`preprocess` skips a resize already done.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from fastall.viewparams import apply_view_params

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 ``[..., 3, H, W]`` to ``[..., 3, size, size]`` (bilinear, antialias)."""
    if images.shape[-2:] == (size, size):
        return images
    return TF.resize(images, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    return TF.to_dtype(images, torch.float32, scale=True)


def normalize(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    return TF.normalize(x, list(mean), list(std))


def preprocess(
    images: torch.Tensor,
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    view_params: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> normalised float ``[B, 3, size, size]``; optional per-sample augmentation.

    ``view_params`` is ``[B, P]`` as drawn by :func:`fastall.features.augment.draw_view_params`
    (:func:`fastall.viewparams.apply_view_params` applies them); ``None`` gives view 0.
    """
    x = to_unit_float(resize_uint8(images, size))
    if view_params is not None:
        x = apply_view_params(x, view_params)
    return normalize(x, mean, std)
