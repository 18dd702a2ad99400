"""What `fastall extract` computes and how: one ``ExtractConfig``, declared once.

Each field is a :func:`~fastall.system.settings.hparam`: its default, help, allowed values and check. The CLI
options of ``fastall extract`` (flag, type, choices, help), the validation and the library's keyword
arguments all come from these declarations.

Adding a setting is a one-place change: declare the field here (type, ``hparam(default, help, check=...,
rule=..., choices=...)``), then read ``config.NAME`` where it is used (``extract.py``, ``loop.py``). The
``--name`` option appears by itself; put the field in :func:`key_params_for` (extract.py) only when it
changes the features (and only where set, so that older caches keep their keys).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fastall.errors import FastallError
from fastall.features.augment import parse_fill
from fastall.system.devices import DEVICE_RULE
from fastall.system.seeds import check_seed
from fastall.system.settings import HParam, hparam, hparams_of

EXTRACT_PRECISIONS = ("fp32", "bf16", "fp16", "int8")

BACKBONE_HELP = (
    "resnet18, resnet50, resnet101, densenet121, efficientnet_b0, efficientnet_v2_s, convnext_tiny, "
    "regnet_y_800mf, mobilenet_v3_large, swin_t, vit_b_16; dinobloom-s|b|l|g, dinov2-s|b, or timm:NAME "
    "(any timm model; extra fastall[timm])."
)
WEIGHTS_HELP = (
    "The backbone's torchvision weights (DEFAULT, IMAGENET1K_V1, ...; resnet50 also imagenet1k_v1/v2), "
    "hub (a timm encoder's pretrained weights: Hugging Face cache or download), a .pth/.safetensors state "
    "dict, or none (random init, tests only) [resnet50: imagenet1k_v1, timm: hub, others: DEFAULT]."
)
FILL_HELP = (
    "Corners uncovered by rotation/zoom: auto (black on a black border, else the median border colour), "
    "black, reflect, edge, median or constant:R,G,B."
)


@dataclass(frozen=True)
class ExtractConfig:
    """Every setting of one extract (the CLI's defaults); ``data`` and ``out`` are the call's arguments."""

    views: int = hparam(
        8, "View 0 plain, views 1.. augmented.", check=lambda v: v >= 1, rule="must be at least 1"
    )
    image_size: int | None = hparam(
        None,
        "Whole-image resize (no crop) [the weights' own size: 224 for most, 384 for efficientnet_v2_s].",
        check=lambda v: 32 <= v <= 2048,
        rule="must be 32..2048",
    )
    backbone: str = hparam("resnet50", BACKBONE_HELP)
    pool: str | None = hparam(
        None,
        "A ViT's token pooling: class token, mean of the patch tokens, or both concatenated "
        "[the preset's; else cls].",
        choices=("cls", "mean", "cls+mean"),
    )
    layers: str | None = hparam(
        None, "CNN stages to pool and concatenate, e.g. layer3 or layer3,layer4 [the last map only]."
    )
    weights: str | None = hparam(None, WEIGHTS_HELP)
    device: str = hparam("auto", DEVICE_RULE)
    precision: str = hparam(
        "auto",
        "auto: bf16 where the device computes it natively (GPU; CPU with avx512_bf16/AMX), else fp32. "
        "int8 (CPU with VNNI/AMX; never chosen by auto): calibrated on the dataset, checked against fp32.",
        choices=("auto", *EXTRACT_PRECISIONS),
    )
    amp: bool | None = hparam(None, "Older alias: --amp is --precision bf16, --no-amp fp32.")
    amp_dtype: str | None = hparam(None, "Older alias of --precision.", choices=("bf16", "fp16"))
    batch_size: int | None = hparam(
        None,
        "Images per forward [GPU: sized from free memory; CPU: 32].",
        check=lambda v: v >= 1,
        rule="must be >= 1",
    )
    workers: int | None = hparam(
        None,
        "Decoding processes [up to 10 on GPU, 0 on CPU].",
        check=lambda v: v >= 0,
        rule="must be non-negative",
    )
    seed: int = hparam(0, "Augmentation (and random-init) seed.")
    fill: str = hparam("auto", FILL_HELP)
    include: tuple[str, ...] = hparam((), "Optional sources, e.g. prelim,testing [prelim].")
    overwrite: bool = hparam(False, "Replace a cache or partial work made with other settings.")
    skip_bad: bool = hparam(False, "Skip unreadable images (listed in the cache), don't stop.")
    patient_regex: str | None = hparam(None, "Regex with one group that extracts the patient ID.")
    update: bool = hparam(
        False,
        "Recompute images whose file changed since they were cached (refused without it); keep the rest.",
    )
    verify_content: bool = hparam(
        False, "Hash every image file to find changes, not only those whose size or mtime changed."
    )
    scratch: str | None = hparam(
        None, "Keep unfinished work (shards) in this folder, e.g. node-local disk [beside --out]."
    )
    patients: str | None = hparam(
        None, "CSV with columns path,patient (paths relative to DATA): each image's patient."
    )
    positive: str | None = hparam(None, "The positive (disease) class, by its folder name.")
    maps: str | None = hparam(
        None,
        "Also store every kept view's activation map at this cut, fp16 (a ResNet's layer2 or layer3), for "
        "`fastall finetune` (it prints the size first).",
        choices=("layer2", "layer3"),
    )
    map_views: int | None = hparam(
        None,
        "With --maps: store the maps of the first N views only [all --views].",
        check=lambda v: v >= 1,
        rule="must be at least 1",
    )

    @staticmethod
    def settings() -> tuple[HParam, ...]:
        return hparams_of(ExtractConfig)

    @classmethod
    def of(cls, config: ExtractConfig | None = None, **settings: Any) -> ExtractConfig:
        """``config`` (or the defaults) with ``settings`` on top, checked; a wrong name is a FastallError."""
        names = {s.name for s in cls.settings()}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise FastallError(f"extract has no setting {', '.join(unknown)}")
        if isinstance(settings.get("include"), str):
            settings["include"] = (settings["include"],)
        if "include" in settings:
            settings["include"] = tuple(settings["include"] or ())
        for path in ("scratch", "patients"):
            if settings.get(path) is not None:
                settings[path] = str(settings[path])
        return replace(config or cls(), **settings).check()

    def check(self) -> ExtractConfig:
        """This configuration with ``fill`` in its canonical form; every problem at once in a FastallError."""
        check_seed(self.seed)
        problems = [p for s in self.settings() if (p := s.flag_problem(getattr(self, s.name)))]
        if self.map_views is not None and (self.maps is None or self.map_views > self.views):
            problems.append(f"--map-views {self.map_views} needs --maps and at most --views ({self.views})")
        if self.maps is not None and self.precision == "int8":
            problems.append(
                "--maps stores the fp32/bf16 activations finetune trains on: drop --precision int8"
            )
        if problems:
            raise FastallError("; ".join(problems))
        return replace(self, fill=parse_fill(self.fill))
