"""The cut: one backbone split into its frozen front (the stem and stages up to the cut) and the trainable
stage after it, for `extract --maps` and `fastall finetune`.

With the front frozen, its map of an image and a view is a pure function, like the pooled features; the
maps are stored in fp16 (:func:`at_cut` is that rounding, part of the model on both paths, so the cached and
end-to-end paths compute the same function). ``front -> at_cut -> stage -> global average pool`` is the
plain backbone's pooled feature (up to the fp16 rounding of the map), so a fine-tuned stage starts where the
frozen features are. Cuts are declared for the torchvision ResNets (:data:`CUT_LAYERS`): the stage after
``layer3`` is ``layer4``, after ``layer2`` it is ``layer3`` and ``layer4``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastall.errors import FastallError
from fastall.features.backbone import build_backbone, load_backbone, recorded_options, state_dict_sha256
from fastall.features.stages import STAGE_NAMES, STEPS
from fastall.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess

CUT_BACKBONES = ("resnet18", "resnet50", "resnet101")
CUT_LAYERS = ("layer2", "layer3")
MAP_DTYPE = torch.float16
STAGE_FEATURES = "stage_features.npy"  # a finetune run's view-0 features through its stage (ood, evaluate)


def check_cut(backbone: str, layer: str) -> None:
    """Refuse a cut that is not declared, naming the ones that are."""
    if backbone not in CUT_BACKBONES:
        raise FastallError(
            f"--maps {layer}: maps are cut from {', '.join(CUT_BACKBONES)}; {backbone} has no declared cut "
            "(a ViT's --maps blockN is not built yet)"
        )
    if layer not in CUT_LAYERS:
        raise FastallError(f"--maps {layer}: cut after one of {', '.join(CUT_LAYERS)} (e.g. --maps layer3)")


def trained_stages(layer: str) -> tuple[str, ...]:
    """The stages after cut ``layer``: what finetune trains."""
    return STAGE_NAMES[STAGE_NAMES.index(layer) + 1 :]


def at_cut(maps: torch.Tensor) -> torch.Tensor:
    """The map as stored (fp16) and read back (fp32): the one rounding between the front and the stage."""
    return maps.to(MAP_DTYPE).float()


class Pooled(nn.Module):
    """The trainable part: stage -> global average pool (the backbone's own) -> features ``[B, D]``."""

    def __init__(self, stage: nn.Module) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        x = maps.float().contiguous(memory_format=torch.channels_last)  # as the stage's weights
        return self.stage(x).mean(dim=(2, 3))


@dataclass
class Cut:
    """A backbone split at ``layer``: ``front`` (frozen, eval, shared with the backbone) and ``stage`` (a
    trainable copy of the stages after the cut, keys as in the backbone: ``layer4.0.conv1.weight``)."""

    backbone: str
    layer: str
    front: nn.Sequential
    stage: nn.Sequential

    @property
    def trained(self) -> tuple[str, ...]:
        return trained_stages(self.layer)

    @property
    def stage_names(self) -> list[str]:
        return list(self.stage._modules)


def cut_backbone(model: nn.Module, backbone: str, layer: str = "layer3") -> Cut:
    """Split a plain torchvision ResNet built by :func:`~fastall.features.backbone.build_backbone` at
    ``layer``: the front keeps the backbone's modules (frozen), the stage is a trainable copy."""
    check_cut(backbone, layer)
    steps = STEPS[backbone]
    end = steps.index(layer) + 1
    front = nn.Sequential(OrderedDict((s, model.get_submodule(s)) for s in steps[:end]))
    stage = nn.Sequential(OrderedDict((s, copy.deepcopy(model.get_submodule(s))) for s in steps[end:]))
    front.eval().requires_grad_(False)
    return Cut(backbone, layer, front, stage.float().requires_grad_(True))


class MapSplit(nn.Module):
    """The plain backbone run as front, then the rest (its own stages, average pool, flatten: the same ops in
    the same order, so the pooled features are bit for bit the plain backbone's), keeping the map at the
    cut of the last forward in ``kept`` (extract --maps)."""

    def __init__(self, model: nn.Module, backbone: str, layer: str) -> None:
        super().__init__()
        check_cut(backbone, layer)
        steps = STEPS[backbone]
        end = steps.index(layer) + 1
        self.front = nn.Sequential(OrderedDict((s, model.get_submodule(s)) for s in steps[:end]))
        rest = [(s, model.get_submodule(s)) for s in steps[end:]]
        self.rest = nn.Sequential(
            OrderedDict([*rest, ("avgpool", model.avgpool), ("flatten", nn.Flatten(1))])
        )
        self.kept: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.kept = self.front(x)
        return self.rest(self.kept)


def stage_state(cut: Cut, state: dict[str, torch.Tensor]) -> None:
    """Load a fine-tuned stage's state dict (keys as :meth:`Cut.stage`'s) into ``cut.stage``, strictly."""
    try:
        cut.stage.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        first = str(err).splitlines()[0][:160]
        raise FastallError(
            f"the fine-tuned stage does not fit {cut.backbone} after {cut.layer}: {first}"
        ) from None


def map_shape(front: nn.Module, size: int) -> tuple[int, int, int]:
    """``(C, H, W)`` of the map at the cut (``front``: a :class:`Cut`'s or :class:`MapSplit`'s) for ``size``
    px inputs."""
    with torch.no_grad():
        return tuple(int(v) for v in front(torch.zeros(1, 3, size, size)).shape[1:])


def map_bytes(images: int, map_views: int, shape: Sequence[int]) -> int:
    """The maps' share of a store: fp16, ``images x map_views x C x H x W x 2`` bytes, plus HDF5's chunk
    index (one chunk per image and view) (docs/cache.md)."""
    c, h, w = shape
    return images * map_views * (2 * c * h * w + 64)


def _front(front: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] == 1:  # oneDNN takes another path for batch 1: keep maps batch-size independent
        return _front(front, x.expand(2, *x.shape[1:]))[:1]
    return front(x.contiguous(memory_format=torch.channels_last)).float()


def view_maps(
    front: nn.Module,
    images: torch.Tensor,
    params: torch.Tensor,
    size: int,
    map_views: int,
    norm: tuple[Sequence[float], Sequence[float]] = (IMAGENET_MEAN, IMAGENET_STD),
) -> torch.Tensor:
    """fp16 ``[B, map_views, C, H, W]``: the front's map of each of the first ``map_views`` views of uint8
    ``images`` (view 0 plain, view v augmented with ``params[:, v]``), through the one preprocess."""
    out = []
    with torch.no_grad():  # not inference_mode: the maps feed a stage trained with autograd
        for v in range(map_views):
            x = preprocess(images, size, *norm, params[:, v] if v else None)
            out.append(_front(front, x).to(MAP_DTYPE))
    return torch.stack(out, dim=1)


def recorded_cut(key_params: dict[str, Any], attrs: dict[str, Any], weights_path: str | None = None) -> Cut:
    """The cut of the backbone a maps store records (its weights, checked by sha256; ``weights_path`` for a
    weights file that moved)."""
    weights = str(key_params.get("weights") or "")
    source = weights_path or (weights if weights not in ("", "file") else attrs.get("weights_source"))
    if not source:
        raise FastallError("the store's backbone weights file is not recorded: pass --weights-path FILE")
    model, info = load_backbone(
        str(source), seed=int(key_params.get("seed", 0)), **recorded_options(key_params)
    )
    recorded = key_params.get("weights_sha256")
    if recorded and info.sha256 != recorded:
        raise FastallError(
            f"backbone weights sha256 {info.sha256[:12]}... ({source}) differ from the recorded "
            f"{str(recorded)[:12]}...: wrong weights (pass --weights-path FILE)"
        )
    return cut_backbone(model, info.name, str(key_params.get("maps") or "layer3"))


class CutBackbone(nn.Module):
    """The fine-tuned backbone, end to end: image -> frozen front -> the map as stored (:func:`at_cut`) ->
    fine-tuned stage -> global average pool -> features ``[B, D]``."""

    def __init__(self, cut: Cut) -> None:
        super().__init__()
        self.front, self.pooled, self.last = cut.front, Pooled(cut.stage), cut.stage_names[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pooled(at_cut(self.front(x)))

    def gradcam_path(self) -> str:
        return f"pooled.stage.{self.last}"


def finetuned(model: nn.Module, backbone: str, record: dict[str, Any], where: str) -> CutBackbone:
    """The recorded backbone with a finetune run's stage (``record``: head.pt's ``finetune``), whose sha256
    must be the recorded one."""
    state = record.get("stage_state_dict")
    if not isinstance(state, dict) or state_dict_sha256(state) != record.get("stage_sha256"):
        raise FastallError(f"{where}: the fine-tuned stage is missing or its sha256 differs (file altered)")
    cut = cut_backbone(model, backbone, str(record.get("maps")))
    stage_state(cut, state)
    return CutBackbone(cut).eval().requires_grad_(False)


def is_cut_state(state: dict[str, Any]) -> bool:
    """Whether a backbone state dict is a :class:`CutBackbone`'s (an exported fine-tuned model)."""
    return any(str(k).startswith("pooled.stage.") for k in state)


def cut_from_state(backbone: str, state: dict[str, torch.Tensor], layer: str, origin: str) -> CutBackbone:
    """A :class:`CutBackbone` from its own state dict (front and stage), through the one backbone builder."""
    merged = {k.removeprefix("front.").removeprefix("pooled.stage."): v for k, v in state.items()}
    cut = cut_backbone(build_backbone(backbone, merged, origin), backbone, layer)
    return CutBackbone(cut).eval().requires_grad_(False)
