"""The timm family of :func:`fastall.features.backbone.build_backbone` and ``load_backbone``: a
:class:`~fastall.features.timm_models.TimmEncoder` from a state dict (keys checked as for torchvision, the
first mismatching one named), or from ``--weights none|hub|PATH`` with its :class:`BackboneInfo` (mean, std
and input size from timm's ``resolve_data_config``; what the shared preprocess does differently recorded)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fastall.features import timm_models as tm
from fastall.features.backbone import (
    MIN_IMAGE_SIZE,
    RANDOM_INIT_WARNING,
    BackboneInfo,
    BackboneSpec,
    build_backbone,
    state_dict_sha256,
)
from fastall.features.weights import assign_state, check_keys, file_state


def build_timm(
    spec: BackboneSpec, state: dict, origin: str, pool: str | None, image_size: int | None
) -> tm.TimmEncoder:
    t = tm.target(spec.name)
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    state = {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}
    size = image_size or tm.natural_size(t)
    model = tm.create(t, size, meta=True)
    state = tm.filter_state(state, model)
    head = tm.classifier_prefix(t, model) + "."
    expected = set(model.state_dict())
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(head)}
    check_keys(spec.name, spec.title, state, expected, origin)
    assign_state(model, state, origin, spec.title)
    if any(b.is_meta for b in model.buffers()):  # buffers outside the state dict: build them for real
        real = tm.create(t, size)
        real.load_state_dict(model.state_dict())
        model = real
    return tm.TimmEncoder(model.eval().requires_grad_(False), t.pool if pool is None else pool)


def load_timm(
    spec: BackboneSpec, weights: str | None, seed: int, pool: str | None, image_size: int | None
) -> tuple[nn.Module, BackboneInfo]:
    """A timm encoder from ``weights``: ``none``, ``hub`` (the default) or a state-dict file."""
    t = tm.target(spec.name)
    weights = "hub" if weights is None else str(weights)
    size = int(image_size or tm.natural_size(t))
    warnings: list[str] = []
    if weights.lower() == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            timm_model = tm.create(t, size)
        model = tm.TimmEncoder(timm_model.eval().requires_grad_(False), t.pool if pool is None else pool)
        name, source = "none", f"random-init seed={seed}"
        warnings.append(RANDOM_INIT_WARNING)
    else:
        if weights.lower() == "hub":
            path, name, source = Path(tm.hub_file(t)), "hub", f"hf-hub:{t.hub}"
        else:
            path = Path(weights).expanduser()
            name, source = "file", str(path.resolve())
        model = build_backbone(spec.name, file_state(path, spec.name), source, pool=pool, image_size=size)
    timm_model = model.model
    cfg = tm.data_config(timm_model)
    fixed = size if tm.takes_size(timm_model) else None
    dim = int(timm_model.num_features) * (2 if model.pool == "cls+mean" else 1)
    if not model.tokens:
        dim = int(getattr(timm_model, "head_hidden_size", None) or timm_model.num_features)
    return model, BackboneInfo(
        name=spec.name,
        weights=name,
        sha256=state_dict_sha256(timm_model.state_dict()),
        source=source,
        feature_dim=dim,
        warnings=warnings,
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        natural_size=size,
        min_size=fixed or MIN_IMAGE_SIZE,
        fixed_size=fixed,
        params=tm.param_count(timm_model),
        pool=model.recorded_pool,
        transform_note=tm.transform_differences(cfg, size),
    )
