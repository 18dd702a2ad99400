"""The frozen backbones: torchvision classifiers without their classifier, giving pooled features.

One registry (:data:`BACKBONES`) says, per architecture, which module is the classifier (replaced by
``Identity``; the ``in_features`` of its first Linear is the feature dimension) and which layer Grad-CAM looks
at: the last feature map, whose channels are the pooled features (so `fastall explain` can standardise them
with the head's statistics). Weights come
through torchvision's multi-weight API (the torch hub cache under TORCH_HOME, or a download), from a ``.pth``
state dict, or from a deterministic random init (``none``, for tests and demos). Their identity is the sha256
of the loaded state dict, recorded in every cache. Mean, std and the input sizes a model takes come from the
weights' own transforms and metadata (:class:`BackboneInfo`).

Beyond the registry: any timm model (``timm:NAME``) and the named presets (``dinobloom-s`` ...), built as
:class:`~fastall.features.timm_models.TimmEncoder` (:mod:`fastall.features.timm_backbone`); and a CNN cut at
``layers`` (:class:`~fastall.features.stages.StageFeatures`). :func:`build_backbone` builds them all.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, WeightsEnum, get_model, get_model_weights

from fastall.errors import FastallError, WeightsUnavailable
from fastall.features import timm_models as tm
from fastall.features.stages import StageFeatures, parse_layers, stage_paths
from fastall.features.weights import (
    assign_state,
    check_keys,
    file_state,
    fixed_sizes,
    named_weights,
    torchvision_state,
)


@dataclass(frozen=True)
class BackboneSpec:
    """How fastall uses one torchvision architecture.

    ``classifier_attr``: dotted path of the classifier: the final Linear, or for MobileNetV3 its two-layer
    head, so that the features are the pooled last feature map (replaced by Identity, its weights dropped);
    ``gradcam_layer``: dotted path of the Grad-CAM target layer, whose output is ``gradcam_layout``
    (``nchw``, or ``tokens`` ``[B, 1 + H*W, C]`` with a class token first); ``fixed_size``: the model takes
    one input size only (given by its weights); ``calibrated_init``: its random init (``--weights none``)
    gets BatchNorm statistics from seeded noise, as its eval-mode activations vanish otherwise.
    """

    name: str
    title: str
    dim: int
    classifier_attr: str
    gradcam_layer: str
    gradcam_layout: str = "nchw"
    fixed_size: bool = False
    calibrated_init: bool = False
    family: str = "torchvision"


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        BackboneSpec("resnet18", "ResNet-18", 512, "fc", "layer4"),
        BackboneSpec("resnet50", "ResNet-50", 2048, "fc", "layer4"),
        BackboneSpec("resnet101", "ResNet-101", 2048, "fc", "layer4"),
        BackboneSpec("densenet121", "DenseNet-121", 1024, "classifier", "features"),
        BackboneSpec(
            "efficientnet_b0", "EfficientNet-B0", 1280, "classifier.1", "features", calibrated_init=True
        ),
        BackboneSpec(
            "efficientnet_v2_s", "EfficientNetV2-S", 1280, "classifier.1", "features", calibrated_init=True
        ),
        BackboneSpec("convnext_tiny", "ConvNeXt-Tiny", 768, "classifier.2", "features"),
        BackboneSpec("regnet_y_800mf", "RegNetY-800MF", 784, "fc", "trunk_output"),
        BackboneSpec(
            "mobilenet_v3_large", "MobileNetV3-Large", 960, "classifier", "features", calibrated_init=True
        ),
        BackboneSpec("swin_t", "Swin-T", 768, "head", "permute"),
        BackboneSpec(
            "vit_b_16",
            "ViT-B/16",
            768,
            "heads.head",
            "encoder.layers.encoder_layer_11.ln_1",
            "tokens",
            fixed_size=True,
        ),
    )
}
DEFAULT_BACKBONE = "resnet50"
FEATURE_DIM = BACKBONES[DEFAULT_BACKBONE].dim
TORCHVISION_WEIGHTS = {  # resnet50's names from before the multi-weight API; still accepted everywhere
    "imagenet1k_v1": ResNet50_Weights.IMAGENET1K_V1,
    "imagenet1k_v2": ResNet50_Weights.IMAGENET1K_V2,
}
MIN_IMAGE_SIZE = 32
RANDOM_INIT_WARNING = (
    "--weights none: the backbone is randomly initialised; features are only good for "
    "tests and demos, results on real data are not meaningful"
)


def get_spec(name: str) -> BackboneSpec:
    """The registry entry of ``name`` (a timm preset or ``timm:NAME`` too); an unknown name is refused."""
    spec = BACKBONES.get(str(name))
    if spec is None and tm.is_timm(name):
        return _timm_spec(str(name))
    if spec is None:
        raise FastallError(
            f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}, "
            f"{', '.join(tm.PRESETS)} or timm:NAME"
        )
    return spec


@functools.cache
def _timm_spec(name: str) -> BackboneSpec:
    t = tm.target(name)
    return BackboneSpec(name, t.title, 0, "head", "", "tokens", family="timm")


def recorded_options(key_params: dict) -> dict:
    """``load_backbone``'s keyword arguments that rebuild the backbone a cache records (old caches: resnet50,
    no pooling or stages recorded)."""
    return {
        "backbone": str(key_params.get("backbone") or DEFAULT_BACKBONE),
        "pool": key_params.get("pool") or None,
        "layers": tuple(key_params.get("layers") or ()) or None,
        "image_size": key_params.get("image_size"),
    }


def default_weights(name: str) -> str:
    """``imagenet1k_v1`` for resnet50 (as before), the architecture's ``DEFAULT`` weights otherwise."""
    return "imagenet1k_v1" if name == DEFAULT_BACKBONE else "DEFAULT"


@dataclass
class BackboneInfo:
    """A loaded backbone's identity and the input rules of its weights."""

    name: str
    weights: str
    sha256: str
    source: str
    feature_dim: int = FEATURE_DIM
    warnings: list[str] = field(default_factory=list)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    natural_size: int = 224
    min_size: int = MIN_IMAGE_SIZE
    fixed_size: int | None = None
    params: int = 0
    pool: str | None = None
    layers: tuple[str, ...] | None = None
    transform_note: str = ""

    def input_size(self, size: int | None) -> int:
        """``size``, or these weights' own size where None; refused where the model cannot take it."""
        size = self.natural_size if size is None else int(size)
        self.check_size(size)
        return size

    def check_size(self, size: int) -> None:
        """Refuse an input size these weights cannot take, naming the sizes they can."""
        spec = get_spec(self.name)
        if self.fixed_size is not None and size != self.fixed_size and spec.family == "timm":
            raise FastallError(
                f"--image-size {size}: {spec.title} was built for {self.fixed_size} px (its position "
                f"embeddings): build it at {size} px (load_backbone(image_size={size}))"
            )
        if self.fixed_size is not None and size != self.fixed_size:
            raise FastallError(
                f"--image-size {size}: {spec.title} with {self.weights} weights takes exactly "
                f"{self.fixed_size} px ({self.name} sizes: {fixed_sizes(self.name)})"
            )
        if size < self.min_size:
            raise FastallError(
                f"--image-size {size}: {spec.title} needs at least {self.min_size} px "
                f"(sizes it can take: {self.min_size} to 2048)"
            )


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _drop_classifier(model: nn.Module, spec: BackboneSpec) -> nn.Module:
    parent, _, leaf = spec.classifier_attr.rpartition(".")
    holder = model.get_submodule(parent) if parent else model
    if leaf.isdigit():
        holder[int(leaf)] = nn.Identity()
    else:
        setattr(holder, leaf, nn.Identity())
    return model


def _model_kwargs(spec: BackboneSpec, state: dict[str, torch.Tensor]) -> dict:
    """Constructor arguments the state dict implies: a ViT's image size from its position embedding."""
    pos = state.get("encoder.pos_embedding")
    if spec.fixed_size and isinstance(pos, torch.Tensor) and pos.dim() == 3:
        side = math.isqrt(pos.shape[1] - 1)
        return {"image_size": side * 16} if side * side == pos.shape[1] - 1 else {}
    return {}


def _skeleton(name: str, **kwargs) -> nn.Module:
    """The architecture with weights on the meta device (uninitialised, free to build)."""
    try:
        with torch.device("meta"):
            return get_model(name, **kwargs)
    except NotImplementedError:  # regnet computes its widths with tensors while it is built
        return get_model(name, **kwargs)


def _empty_model(spec: BackboneSpec, state: dict[str, torch.Tensor]) -> nn.Module:
    return _drop_classifier(_skeleton(spec.name, **_model_kwargs(spec, state)), spec)


def _strip(state: dict, origin: str, spec: BackboneSpec) -> dict[str, torch.Tensor]:
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsUnavailable(
                f"{origin}: entry {name!r} is not a tensor; expected a {spec.title} state dict"
            )
        name = name.removeprefix("module.")
        if not name.startswith(spec.classifier_attr + "."):
            out[name] = value
    return out


def _guess_architecture(state: dict) -> str | None:
    """The registered architecture whose state-dict keys ``state`` has exactly (for error messages)."""
    for spec in BACKBONES.values():
        stripped = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
        keys = {k for k in stripped if not k.startswith(spec.classifier_attr + ".")}
        if keys == set(_empty_model(spec, stripped).state_dict()):
            return spec.name
    return None


def build_backbone(
    name: str,
    state: dict,
    origin: str = "state dict",
    *,
    pool: str | None = None,
    layers: tuple[str, ...] | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """The one place a backbone is built: architecture ``name`` from a state dict (classifier entries and a
    ``module.`` prefix dropped): eval mode, frozen, channels_last, on the CPU. ``pool``: a timm ViT's
    token pooling; ``layers``: the stages of a torchvision CNN (:mod:`fastall.features.stages`; its state
    whole or cut); ``image_size``: a timm ViT's input size (its position embeddings resampled to it)."""
    spec = get_spec(name)
    if spec.family == "timm":
        from fastall.features.timm_backbone import build_timm

        return build_timm(spec, state, origin, pool, image_size)
    if pool is not None:
        raise FastallError(f"--pool {pool}: token pooling applies to timm ViTs; {spec.title} pools its map")
    layers = parse_layers(layers)
    if layers:
        state = {k.removeprefix("model."): v for k, v in state.items()}
    state = _strip(state, origin, spec)
    model = _empty_model(spec, state)
    expected, guesser = set(model.state_dict()), _guess_architecture
    if layers:  # the whole architecture's state, or the cut one (an export's): the parts cut away go
        cut = StageFeatures(model, spec.name, layers)
        kept = {k.removeprefix("model.") for k in cut.state_dict()}
        state = {k: v for k, v in state.items() if k in kept or k not in expected}
        expected, guesser, model = kept, None, cut
    check_keys(spec.name, spec.title, state, expected, origin, guesser)
    assign_state(model.model if layers else model, state, origin, spec.title)
    return model.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def _calibrate_batchnorm(model: nn.Module, seed: int) -> None:
    """Running BatchNorm statistics of one batch of seeded Gaussian noise."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    noise = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 128, 128, generator=noise))
    for bn in norms:
        bn.momentum = 0.1
    model.eval()


@functools.lru_cache(maxsize=2)
def _random_state(name: str, seed: int) -> tuple[dict[str, torch.Tensor], str]:
    spec = get_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _drop_classifier(get_model(name), spec)
        if spec.calibrated_init:
            _calibrate_batchnorm(model, seed)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return state, state_dict_sha256(state)


def _input_rules(spec: BackboneSpec, weights: WeightsEnum | None, model: nn.Module) -> dict:
    reference = weights or get_model_weights(spec.name).DEFAULT
    transforms = reference.transforms()
    fixed = int(model.image_size) if spec.fixed_size else None
    return {
        "mean": tuple(float(v) for v in transforms.mean),
        "std": tuple(float(v) for v in transforms.std),
        "natural_size": fixed or int(transforms.crop_size[0]),
        "min_size": fixed or max(MIN_IMAGE_SIZE, int(reference.meta.get("min_size", (1, 1))[0])),
        "fixed_size": fixed,
    }


def load_backbone(
    weights: str | None = None,
    seed: int = 0,
    *,
    backbone: str = DEFAULT_BACKBONE,
    pool: str | None = None,
    layers: str | tuple[str, ...] | None = None,
    image_size: int | None = None,
) -> tuple[nn.Module, BackboneInfo]:
    """Architecture ``backbone`` without its classifier: eval mode, frozen, channels_last, on the CPU.

    ``weights``: a torchvision weights name of that architecture (``DEFAULT``, ``IMAGENET1K_V1``, ...; any
    case), a ``.pth``/``.safetensors`` state dict, ``hub`` (a timm encoder's pretrained weights), or ``none``
    (random init from ``seed``); None: :func:`default_weights`. ``pool``, ``layers``, ``image_size``: as
    :func:`build_backbone`. The sha256 is the whole architecture's state (before a cut at ``layers``).
    """
    spec = get_spec(backbone)
    if spec.family == "timm":
        from fastall.features.timm_backbone import load_timm

        return load_timm(spec, weights, seed, pool, image_size)
    layers = parse_layers(layers)
    if layers:
        stage_paths(spec.name, layers)  # refused before anything is built
    if pool is not None:
        raise FastallError(f"--pool {pool}: token pooling applies to timm ViTs; {spec.title} pools its map")
    weights = default_weights(spec.name) if weights is None else str(weights)
    warnings: list[str] = []
    sha, member = None, None
    if weights.lower() == "none":
        (state, sha), name, source = _random_state(spec.name, seed), "none", f"random-init seed={seed}"
        warnings.append(RANDOM_INIT_WARNING)
    elif (member := named_weights(spec.name, weights)) is not None:
        (state, source), name = torchvision_state(spec.name, spec.title, member), member.name.lower()
    else:
        path = Path(weights).expanduser()
        state, name, source = file_state(path, spec.name), "file", str(path.resolve())
    model = build_backbone(spec.name, state, source, pool=pool)
    sha = sha or state_dict_sha256(model.state_dict())
    rules = _input_rules(spec, member, model)
    params = sum(p.numel() for p in model.parameters())
    dim = _feature_dim(spec)
    if layers:
        model = StageFeatures(model, spec.name, layers)
        with torch.no_grad():
            dim = int(model(torch.zeros(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)).shape[1])
        params = sum(p.numel() for p in model.parameters())
    return model, BackboneInfo(
        name=spec.name,
        weights=name,
        sha256=sha,
        source=source,
        feature_dim=dim,
        warnings=warnings,
        params=params,
        layers=layers,
        **rules,
    )


@functools.cache
def _feature_dim(spec: BackboneSpec) -> int:
    """``in_features`` of the classifier's first Linear: the dimension of the pooled features."""
    classifier = _skeleton(spec.name).get_submodule(spec.classifier_attr)
    return int(next(m for m in classifier.modules() if isinstance(m, nn.Linear)).in_features)
