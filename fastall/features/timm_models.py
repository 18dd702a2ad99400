"""timm encoders: ``--backbone timm:NAME`` (any timm architecture, a pretrained tag, or ``hf-hub:REPO``) and
the named presets of the foundation encoders haematology uses (DinoBloom, DINOv2).

:class:`TimmEncoder` wraps a timm model built with ``num_classes=0`` and pools what ``forward_features``
gives: a ViT's tokens by ``cls``, ``mean`` (of the patch tokens, after the ``num_prefix_tokens``) or
``cls+mean`` (DINOv2's linear evaluation), a CNN's map by the model's own ``forward_head(pre_logits=True)``.
Weights come from a local ``.safetensors``/``.pth`` state dict (through the architecture's own
``checkpoint_filter_fn``: DINOv2's original keys, position embeddings resampled to the image size), from the
Hugging Face hub or its cache (``hub``), or a seeded random init (``none``). Building the backbone itself is
:func:`fastall.features.backbone.build_backbone`'s job.
"""

from __future__ import annotations

import math
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastall.errors import FastallError, WeightsUnavailable

TIMM_EXTRA = "pip install 'fastall[timm]'"
PREFIX = "timm:"
POOLS = ("cls", "mean", "cls+mean")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
DOWNLOAD_TIMEOUT_S = 15.0
PRESERVED_RULE = "bilinear+antialias resize of the whole image, no crop"


@dataclass(frozen=True)
class Preset:
    """An encoder asked for by name: its timm architecture, image size, pooling and weights' home."""

    name: str
    title: str
    arch: str
    hub: str
    pool: str
    image_size: int = 224
    patch: int = 14
    paper: str = ""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        *(
            Preset(
                f"dinobloom-{s}",
                f"DinoBloom-{s.upper()}",
                f"vit_{size}_patch14_dinov2",
                f"1aurent/vit_{size}_patch14_224.dinobloom",
                "cls",
                paper="DinoBloom (MICCAI 2024): DINOv2 trained on blood cells; features: the class token",
            )
            for s, size in (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant"))
        ),
        *(
            Preset(
                f"dinov2-{s}",
                f"DINOv2 ViT-{s.upper()}/14",
                f"vit_{size}_patch14_dinov2",
                f"timm/vit_{size}_patch14_dinov2.lvd142m",
                "cls+mean",
                paper="DINOv2 (LVD-142M); linear evaluation: class token + mean of the patch tokens",
            )
            for s, size in (("s", "small"), ("b", "base"))
        ),
    )
}


def import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise FastallError(f"timm encoders need the optional extra: {TIMM_EXTRA}") from None
    return timm


def is_timm(name: str) -> bool:
    return str(name).startswith(PREFIX) or str(name) in PRESETS


@dataclass(frozen=True)
class TimmTarget:
    """What ``--backbone`` names: the architecture and where its pretrained weights live (``hub``)."""

    name: str
    title: str
    arch: str
    hub: str | None
    pool: str | None = None
    image_size: int | None = None
    cfg: tuple = ()
    model_args: tuple = ()  # a hub config's constructor arguments

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        return dict(self.cfg)


def _hub_cfg(repo: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    from timm.models._hub import load_model_config_from_hf

    try:
        with _timeout():
            cfg, arch, args = load_model_config_from_hf(repo)
    except Exception as err:  # noqa: BLE001 - offline, no such repo: all mean "not available"
        raise WeightsUnavailable(_offline(repo, "config.json", err)) from err
    return arch, dict(cfg), dict(args or {})


def target(name: str) -> TimmTarget:
    """The timm architecture ``name`` (a preset or ``timm:NAME``) stands for; unknown names are refused."""
    name = str(name)
    if name in PRESETS:
        p = PRESETS[name]
        return TimmTarget(name, p.title, p.arch, p.hub, p.pool, p.image_size)
    timm = import_timm()
    spec = name.removeprefix(PREFIX)
    if spec.startswith("hf-hub:"):
        repo = spec.removeprefix("hf-hub:")
        arch, cfg, args = _hub_cfg(repo)
        size = args.pop("img_size", None)
        size = int(size if isinstance(size, int) else size[0]) if size else None
        items = tuple(sorted(cfg.items()))
        return TimmTarget(
            name, spec, arch, repo, image_size=size, cfg=items, model_args=tuple(sorted(args.items()))
        )
    arch = spec.split(".")[0]
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:5]
        hint = f" (e.g. {', '.join(close)}; `timm.list_models()` lists all)" if close else ""
        raise FastallError(f"--backbone {name}: no timm architecture {arch!r}{hint}")
    cfg = timm.models.get_pretrained_cfg(spec)
    cfg = cfg.to_dict() if cfg is not None else {}
    return TimmTarget(name, spec, arch, cfg.get("hf_hub_id") or None, cfg=tuple(sorted(cfg.items())))


def create(t: TimmTarget, image_size: int | None, *, meta: bool = False) -> nn.Module:
    """The architecture without classifier (``num_classes=0``), at ``image_size`` where it takes one."""
    timm = import_timm()
    kwargs: dict[str, Any] = {**dict(t.model_args), "pretrained": False, "num_classes": 0}
    if t.cfg:
        kwargs["pretrained_cfg_overlay"] = t.pretrained_cfg
    with torch.device("meta") if meta else torch.device("cpu"):
        if image_size is not None:
            try:
                return timm.create_model(t.arch, img_size=int(image_size), **kwargs)
            except TypeError:
                pass
        return timm.create_model(t.arch, **kwargs)


def natural_size(t: TimmTarget) -> int:
    """The preset's size, else the pretrained config's input size (224 without one)."""
    if t.image_size:
        return int(t.image_size)
    size = t.pretrained_cfg.get("input_size") or create(t, None, meta=True).pretrained_cfg.get("input_size")
    return int(size[-1]) if size else 224


def takes_size(model: nn.Module) -> bool:
    """Whether the model was built for one input size (a ViT's position embedding)."""
    return getattr(model, "pos_embed", None) is not None and not getattr(model, "dynamic_img_size", False)


class TimmEncoder(nn.Module):
    """A timm model's pooled features: tokens by ``pool`` (cls, mean, cls+mean), a map by its own head."""

    def __init__(self, model: nn.Module, pool: str | None) -> None:
        super().__init__()
        self.model = model
        self.prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.tokens = hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens")
        self.pool = default_pool(model) if pool is None else str(pool)
        if not self.tokens and pool is not None:
            raise FastallError(f"--pool {pool}: only ViTs pool tokens; this CNN pools its map (omit --pool)")
        if self.tokens and self.pool not in POOLS:
            raise FastallError(f"--pool {pool}: choose {', '.join(POOLS)}")
        if self.tokens and self.prefix == 0 and "cls" in self.pool:
            raise FastallError(f"--pool {pool}: this ViT has no class token; use --pool mean")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.model.forward_features(x)
        if not self.tokens:
            return self.model.forward_head(f, pre_logits=True)
        if self.pool == "cls":
            return f[:, 0]
        mean = f[:, self.prefix :].mean(dim=1)
        return mean if self.pool == "mean" else torch.cat([f[:, 0], mean], dim=1)

    @property
    def recorded_pool(self) -> str | None:
        return self.pool if self.tokens else None

    def gradcam_path(self) -> str:
        """Before the last block's attention (a ViT), else the last stage of ``feature_info``."""
        if self.tokens:
            return f"model.blocks.{len(self.model.blocks) - 1}.norm1"
        return "model." + str(self.model.feature_info[-1]["module"])

    def reshape_transform(self, tokens: torch.Tensor) -> torch.Tensor:
        """pytorch-grad-cam's ``reshape_transform``: tokens ``[B, prefix + H*W, C]`` -> ``[B, C, H, W]``."""
        return tokens_to_grid(tokens, self.prefix)


def tokens_to_grid(tokens: torch.Tensor, prefix: int) -> torch.Tensor:
    """``[B, prefix + H*W, C]`` -> ``[B, C, H, W]`` (square grids)."""
    patches = tokens[:, prefix:]
    side = math.isqrt(patches.shape[1])
    return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)


def default_pool(model: nn.Module) -> str:
    """The class token where the model has one and pools by it, else the mean of the patch tokens."""
    if int(getattr(model, "num_prefix_tokens", 0) or 0) and getattr(model, "global_pool", "token") == "token":
        return "cls"
    return "mean"


def filter_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The architecture's own ``checkpoint_filter_fn`` (key conversions, position embeddings resampled)."""
    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    if fn is None:
        return state
    try:
        return fn(state, model)
    except Exception:  # noqa: BLE001 - a state dict it cannot convert is refused by the key check after
        return state


def classifier_prefix(t: TimmTarget, model: nn.Module) -> str:
    own = getattr(model, "pretrained_cfg", {}).get("classifier")
    return str(own or t.pretrained_cfg.get("classifier") or "head")


def data_config(model: nn.Module) -> dict[str, Any]:
    """timm's ``resolve_data_config`` of the model's pretrained config."""
    from timm.data import resolve_data_config

    return resolve_data_config({}, model=model)


def transform_differences(cfg: dict[str, Any], size: int) -> str:
    """What the shared preprocess does differently from timm's own eval transform of ``cfg``."""
    crop = float(cfg.get("crop_pct", 1.0) or 1.0)
    resize = math.floor(size / crop)
    return (
        f"timm: {cfg.get('interpolation', 'bicubic')} resize to {resize} then "
        f"{cfg.get('crop_mode', 'center')} crop {size} (crop_pct {crop:g}); "
        f"fastall: {PRESERVED_RULE} to {size}"
    )


class _timeout:
    def __enter__(self) -> None:
        self.previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)

    def __exit__(self, *exc: object) -> None:
        socket.setdefaulttimeout(self.previous)


def _offline(repo: str, file: str, err: BaseException) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
    return (
        f"{repo} {file} is not cached and cannot be downloaded ({reason}): fetch "
        f"https://huggingface.co/{repo}/resolve/main/{file} and pass it as --weights PATH, or put it into "
        f"{HF_HUB_CACHE} with `huggingface-cli download {repo}`; or --weights none (random init, tests only)"
    )


def hub_file(t: TimmTarget) -> str:
    """The local path of the target's hub weights (the Hugging Face cache, or a download)."""
    if not t.hub:
        raise WeightsUnavailable(
            f"--backbone {t.name}: timm knows no pretrained weights for it; use --weights PATH or none"
        )
    from huggingface_hub import hf_hub_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    err: BaseException | None = None
    for file in HUB_FILES:
        try:
            with _timeout():
                return hf_hub_download(t.hub, file, local_files_only=offline)
        except Exception as e:  # noqa: BLE001 - offline, missing file: try the next, else say what to fetch
            err = err or e
    raise WeightsUnavailable(_offline(t.hub, HUB_FILES[0], err or RuntimeError("not found")))


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
