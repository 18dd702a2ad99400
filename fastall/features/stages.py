"""Multi-layer CNN features (``extract --layers layer3`` / ``layer3,layer4``): the torchvision CNN cut after
its deepest requested stage (the modules after it dropped), each stage's map average-pooled, the pooled
vectors concatenated shallow to deep.

``layer1``..``layer4`` name the four resolution stages of every CNN in :data:`STAGES` (a ResNet's own
``layerN``; the equivalent stage of the others, ending at /4, /8, /16 and /32 of the input); ``layer4`` of a
ResNet is what the plain backbone pools.
"""

from __future__ import annotations

import torch
from torch import nn

from fastall.errors import FastallError

STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")
_RESNET = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_DENSE = ("conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2", "transition2")
_DENSE += ("denseblock3", "transition3", "denseblock4", "norm5")
# Per architecture: the modules its forward runs in order (up to the last map), and its four stages.
STEPS: dict[str, tuple[str, ...]] = {
    "resnet18": _RESNET,
    "resnet50": _RESNET,
    "resnet101": _RESNET,
    "densenet121": tuple(f"features.{n}" for n in _DENSE),
    "efficientnet_b0": tuple(f"features.{i}" for i in range(9)),
    "efficientnet_v2_s": tuple(f"features.{i}" for i in range(8)),
    "convnext_tiny": tuple(f"features.{i}" for i in range(8)),
    "regnet_y_800mf": ("stem", *(f"trunk_output.block{i}" for i in range(1, 5))),
}
STAGES: dict[str, tuple[str, ...]] = {
    **{name: ("layer1", "layer2", "layer3", "layer4") for name in ("resnet18", "resnet50", "resnet101")},
    "densenet121": ("features.denseblock1", "features.denseblock2", "features.denseblock3", "features.norm5"),
    "efficientnet_b0": ("features.2", "features.3", "features.5", "features.8"),
    "efficientnet_v2_s": ("features.2", "features.3", "features.5", "features.7"),
    "convnext_tiny": ("features.1", "features.3", "features.5", "features.7"),
    "regnet_y_800mf": tuple(f"trunk_output.block{i}" for i in range(1, 5)),
}


def parse_layers(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``"layer3,layer4"`` -> ``("layer3", "layer4")``; None or empty: the plain backbone."""
    if value is None:
        return None
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    bad = [n for n in names if n not in STAGE_NAMES]
    if bad or len(set(names)) != len(names):
        raise FastallError(
            f"--layers {','.join(names)}: give distinct stage names among {', '.join(STAGE_NAMES)}, "
            "comma-separated (e.g. layer3 or layer3,layer4)"
        )
    return tuple(sorted(names, key=STAGE_NAMES.index)) or None


def stage_paths(backbone: str, layers: tuple[str, ...]) -> list[str]:
    """The module paths of ``layers`` in torchvision architecture ``backbone``."""
    if backbone not in STAGES:
        raise FastallError(
            f"--layers: {backbone} has no declared stages; --layers applies to {', '.join(STAGES)} "
            "(a timm CNN: use its own pooled features)"
        )
    return [STAGES[backbone][STAGE_NAMES.index(n)] for n in layers]


class StageFeatures(nn.Module):
    """A CNN cut after its deepest requested stage (the modules after it dropped): the requested stages'
    maps average-pooled and concatenated, shallow to deep. State-dict keys are the architecture's, under
    ``model.``."""

    def __init__(self, model: nn.Module, backbone: str, layers: tuple[str, ...]) -> None:
        super().__init__()
        self.paths = stage_paths(backbone, layers)
        steps = STEPS[backbone]
        self.steps = list(steps[: steps.index(self.paths[-1]) + 1])
        for name, child in list(model.named_modules()):
            if name and child is not model and not _kept(name, self.steps):
                _replace(model, name)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        for path in self.steps:
            x = self.model.get_submodule(path)(x)
            if path in self.paths:
                pooled.append(x.mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)

    def gradcam_path(self) -> str:
        """The deepest stage: its channels are the last of the pooled features."""
        return "model." + self.paths[-1]


def _kept(name: str, steps: list[str]) -> bool:
    """Whether module ``name`` is one of the steps, inside one, or holds one."""
    return any(name == s or name.startswith(s + ".") or s.startswith(name + ".") for s in steps)


def _replace(model: nn.Module, name: str) -> None:
    *parents, leaf = name.split(".")
    holder = model
    for part in parents:
        holder = holder._modules.get(part)
        if holder is None:  # inside a module already dropped
            return
    if leaf in holder._modules:
        holder._modules[leaf] = nn.Identity()
