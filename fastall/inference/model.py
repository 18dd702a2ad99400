"""The end-to-end classifier as one ``nn.Module``: uint8 pixels -> shared preprocessing -> frozen backbone
-> trained head. Loading it from a run or an export file is :mod:`fastall.inference.artifacts`' job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fastall.head import Head
from fastall.inference.runtime import Runtime, build_runtime
from fastall.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess


class LeukemiaClassifier(nn.Module):
    """A timm-like model over uint8 images ``[B, 3, H, W]`` (any H, W; resized as in ``extract``).

    ``runtime`` (from :meth:`optimize`) runs the backbone at another precision or backend; without one the
    fp32 ``backbone`` runs eagerly. The fp32 backbone always stays, as the reference.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: Head,
        *,
        image_size: int,
        class_names: Sequence[str],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        provenance: dict[str, Any] | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.head = head.eval().requires_grad_(False)
        self.image_size = int(image_size)
        self.class_names = list(class_names)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.provenance = dict(provenance or {})
        self.runtime = runtime

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    @property
    def precision(self) -> str:
        return self.runtime.precision if self.runtime is not None else "fp32"

    @property
    def backend(self) -> str:
        return self.runtime.backend if self.runtime is not None else "eager"

    def preprocess(self, images: torch.Tensor, view_params: torch.Tensor | None = None) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if view_params is not None:
            view_params = view_params.to(self.device)
        return preprocess(images, self.image_size, self.mean, self.std, view_params=view_params)

    def forward_features(self, images: torch.Tensor, view_params: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images -> float32 features ``[B, D]``; ``view_params [B, P]`` reproduce an augmented view."""
        return self.backbone_features(self.preprocess(images, view_params))

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float ``[B, 3, S, S]`` -> float32 features, at the current precision."""
        if self.runtime is not None:
            return self.runtime(x)
        return self.backbone(x.to(self.device).contiguous(memory_format=torch.channels_last)).float()

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.to(self.device))

    def forward(self, images: torch.Tensor, view_params: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(images, view_params))

    @torch.inference_mode()
    def predict_proba(self, images: torch.Tensor, view_params: torch.Tensor | None = None) -> torch.Tensor:
        return torch.softmax(self(images, view_params), dim=1)

    def optimize(
        self,
        precision: str = "fp32",
        *,
        calibration: torch.Tensor | None = None,
        int8_state: dict | None = None,
        backend: str = "auto",
    ) -> LeukemiaClassifier:
        """A new model running the backbone at ``precision`` (``calibration``: uint8 images, for int8).

        ``self`` is left as it is; both share the fp32 backbone and the head. ``optimize("fp32",
        backend="eager")`` gives the plain eager fp32 model.
        """
        runtime = None
        if precision != "fp32" or backend != "eager":
            size = self.image_size
            example = self.preprocess(torch.zeros(1, 3, size, size, dtype=torch.uint8))
            calib = None
            if calibration is not None:
                calib = torch.cat([self.preprocess(c) for c in calibration.split(16)])
            runtime = build_runtime(
                self.backbone,
                precision,
                device=self.device,
                example=example,
                calibration=calib,
                int8_state=int8_state,
                backend=backend,
            )
        return LeukemiaClassifier(
            self.backbone,
            self.head,
            image_size=self.image_size,
            class_names=self.class_names,
            mean=self.mean,
            std=self.std,
            provenance=self.provenance,
            runtime=runtime,
        )

    def int8_state(self) -> dict[str, torch.Tensor] | None:
        """The quantised backbone's state (scales included), to ship in an export; None unless int8."""
        if self.runtime is None or self.runtime.precision != "int8":
            return None
        return self.runtime.int8_state
