"""Class activation maps of a run's end-to-end model (`fastall explain`), computed by pytorch-grad-cam.

The model is :class:`LeukemiaClassifier` as ``predict`` runs it (shared preprocess, frozen backbone, the head
with its standardisation), in eager fp32. Maps are taken at the layer the backbone declares
(:mod:`fastall.features.gradcam`; a ViT's tokens laid out on their grid by the library's
``reshape_transform``), standardised per channel by the head's statistics (the last channels of the
features: the deepest stage of a multi-layer CNN, the patch-token mean of ``cls+mean``): global
average pooling and a per-channel affine map commute, so this is the same model with the standardisation moved
before the pooling, and the maps weigh each channel's deviation from the training fold's mean rather than its
raw level (on raw levels half of the maps come out empty: docs/explain.md). The backbone is frozen, so nothing
in it carries gradients: during one call a forward hook hands the library that standardised output as a leaf
that requires grad, and gives the rest of the model the layer's output unchanged (bit for bit). The weights
and their ``requires_grad`` flags are never touched.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from fastall import __version__
from fastall.data.loader import iter_batches
from fastall.data.walk import find_images
from fastall.errors import FastallError
from fastall.features.gradcam import gradcam_path, gradcam_reshape, target_layer
from fastall.inference.model import LeukemiaClassifier
from fastall.system import csvsafe
from fastall.system.events import Reporter, silent
from fastall.system.runfolder import atomic_folder, check_target

METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "layercam": "LayerCAM"}
PREDICTED = "predicted"
EXTRA = "pip install -e '.[explain]'"
EXPLAIN_FORMAT = "fastall-explain"
NEAR_BLACK = 16
HTML_MAX_IMAGES = 200


def load_explainable(
    run: str | Path, *, device: str = "auto", weights_path: str | Path | None = None
) -> LeukemiaClassifier:
    """A run folder or an export, loaded as ``predict`` loads it, at eager fp32 (gradients need it)."""
    from fastall.inference.artifacts import load_for_inference

    return load_for_inference(
        run, device=device, precision="fp32", backend="eager", weights_path=weights_path
    )


def cam_class(method: str) -> type:
    """The pytorch-grad-cam class of ``method`` (gradcam, gradcam++ or layercam)."""
    key = str(method).lower()
    if key not in METHODS:
        raise FastallError(f"unknown --method {method!r}: choose {', '.join(METHODS)} (pytorch-grad-cam)")
    try:
        import pytorch_grad_cam
    except ImportError:
        raise FastallError(f"fastall explain needs the optional extra: {EXTRA}") from None
    return getattr(pytorch_grad_cam, METHODS[key])


def target_index(model: LeukemiaClassifier, target: str) -> int | None:
    """None for the predicted class, else the index of class ``target``."""
    if target == PREDICTED:
        return None
    if target in model.class_names:
        return model.class_names.index(target)
    raise FastallError(
        f"unknown --target {target!r}: the run's classes are {', '.join(model.class_names)} (or {PREDICTED})"
    )


def model_layer(model: LeukemiaClassifier) -> tuple[str, nn.Module]:
    """``(backbone name, module)`` of the layer the model's backbone declares for Grad-CAM."""
    name = str(model.provenance.get("key_params", {}).get("backbone") or "resnet50")
    return name, target_layer(model.backbone, name)


class _Tap(nn.Module):
    """The target layer the library hooks: the declared layer's output, standardised per channel."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z


@contextmanager
def gradients_at(layer: nn.Module, head: nn.Module, channels_last: bool = False) -> Iterator[nn.Module]:
    """Within the block, ``layer``'s output standardised by ``head`` (per channel: dim 1 of a map, the last
    dim of tokens when ``channels_last``) passes through the yielded tap as a leaf that requires grad; the
    model's values are unchanged and its frozen weights stay frozen."""
    tap = _Tap()

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        raw = output.detach()
        n = head.mean.numel()
        c = raw.shape[-1] if channels_last else raw.shape[1]
        if raw.dim() != (3 if channels_last else 4) or c > n:
            raise FastallError(
                f"the Grad-CAM layer gives {tuple(raw.shape)}, not "
                f"{'[B, N, C]' if channels_last else '[B, C, H, W]'} with C <= {n} channels "
                "to standardise with the head's statistics"
            )
        shape = (1, 1, -1) if channels_last else (1, -1, 1, 1)
        mean, std = head.mean[n - c :].view(shape), head.std[n - c :].view(shape)
        z = tap(((raw - mean) / std).requires_grad_(True))
        return raw + (z - z.detach()) * std

    handle = layer.register_forward_hook(hook)
    try:
        yield tap
    finally:
        handle.remove()


@dataclass
class Maps:
    """One batch: ``cams [B, S, S]`` in [0, 1] at the input resolution, ``probs [B, K]``, ``targets [B]``."""

    cams: np.ndarray
    probs: np.ndarray
    targets: np.ndarray


def explain_batch(
    model: LeukemiaClassifier, images: torch.Tensor, *, method: str = "gradcam", target: str = PREDICTED
) -> Maps:
    """Maps of uint8 ``images [B, 3, S, S]`` for the predicted class or class ``target``."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls, index = cam_class(method), target_index(model, target)
    backbone, layer = model_layer(model)
    reshape = gradcam_reshape(model.backbone, backbone)
    runtime, model.runtime = model.runtime, None
    try:
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            gradients_at(layer, model.head, reshape is not None) as tap,
        ):
            cam = cls(model=model, target_layers=[tap], reshape_transform=reshape)
            try:
                targets = None if index is None else [ClassifierOutputTarget(index)] * len(images)
                cams = cam(input_tensor=images, targets=targets)
                logits = cam.outputs.detach().float().cpu()
            finally:
                cam.activations_and_grads.release()
    finally:
        model.runtime = runtime
    probs = torch.softmax(logits, dim=1).numpy()
    chosen = probs.argmax(axis=1) if index is None else np.full(len(probs), index)
    return Maps(np.asarray(cams, dtype=np.float32), probs, chosen)


def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The heatmap of ``cam`` blended over RGB uint8 ``image [H, W, 3]`` (the library's own overlay)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(image.astype(np.float32) / 255, cam, use_rgb=True, image_weight=0.5)


def otsu_threshold(gray: np.ndarray) -> float:
    """Otsu's threshold of 8-bit-range values: the class split with the largest between-class variance."""
    hist, edges = np.histogram(gray, bins=256, range=(0, 256))
    p = hist / max(1, hist.sum())
    omega, mu = np.cumsum(p), np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    return float(edges[int(np.nanargmax(between)) + 1]) if np.isfinite(between).any() else 128.0


def cell_mask(image: np.ndarray) -> np.ndarray:
    """Cell pixels of RGB uint8 ``image [H, W, 3]``.

    On a black background (C-NMC: the border is near black) the cell is every pixel not near black; on
    any other background, the side of Otsu's threshold that the border pixels are not on.
    """
    bright = image.max(axis=2)
    w = max(1, min(image.shape[:2]) // 32)
    ring = np.ones(bright.shape, bool)
    ring[w:-w, w:-w] = False
    if np.median(bright[ring]) <= NEAR_BLACK:
        return bright > NEAR_BLACK
    gray = image.mean(axis=2)
    t = otsu_threshold(gray)
    return gray < t if np.median(gray[ring]) >= t else gray >= t


def mass_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's mass on ``mask`` (NaN for an empty map)."""
    total = float(cam.sum())
    return float(cam[mask].sum()) / total if total > 0 else float("nan")


@dataclass
class ExplainResult:
    out: Path
    rows: list[dict[str, Any]]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def resolve_inputs(inputs: Sequence[str | Path], data_root: Callable[[], Path]) -> list[Path]:
    """Paths as given; a relative one that is not here is taken under the run's data root (as the run's
    predictions.csv names its images)."""
    out = []
    for raw in inputs:
        path = Path(raw)
        if not (path.exists() or path.is_symlink() or path.is_absolute()):
            path = data_root() / path
        out.append(path)
    return out


def run_data_root(model: LeukemiaClassifier, data: str | Path | None) -> Path:
    """``--data``, or the data root recorded in the run's cache (verify's messages when either moved)."""
    from fastall.inference.artifacts import open_run

    if data is not None:
        if not Path(data).is_dir():
            raise FastallError(f"{data}: data root is not here: pass --data DIR")
        return Path(data)
    run = model.provenance.get("run")
    if not run:
        raise FastallError(
            f"{model.provenance.get('export', 'model')}: an export records no images: pass --data DIR"
        )
    return open_run(run).data_root()


def explain_paths(
    model: LeukemiaClassifier,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    method: str = "gradcam",
    target: str = PREDICTED,
    batch_size: int = 32,
    data: str | Path | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> ExplainResult:
    """Write ``out``: per image the resized original, the overlay and the map, explain.csv, index.html.
    Unreadable files are skipped (``skipped`` warnings of ``reporter``, whose ``explain`` task counts the
    images); ``out`` appears complete or not at all. Images the run trained on are marked (``in_run``)."""
    from fastall.inference.explain_html import render_index
    from fastall.inference.in_run import training_status

    cam_class(method)
    target_index(model, target)
    check_target(Path(out).absolute(), overwrite, EXPLAIN_FORMAT)
    paths, problems = find_images(resolve_inputs(inputs, lambda: run_data_root(model, data)))
    skipped: list[tuple[str, str]] = []
    reporter = reporter or silent()

    def bad(path: str, reason: str, message: str) -> None:
        skipped.append((path, reason))
        reporter.warn("skipped", message)

    for path, reason in problems:
        bad(path, reason, f"{path}: {reason}")
    if not paths:
        raise FastallError(f"no image files found in {', '.join(map(str, inputs))}")
    width = max(4, len(str(len(paths))))
    trained = training_status(model, data)
    rows: list[dict[str, Any]] = []
    cards: list[dict[str, Any]] = []
    with atomic_folder(out, overwrite=overwrite) as tmp, reporter.task("explain", len(paths)) as advance:
        for batch in iter_batches(paths, model.image_size, batch_size):
            for i, message in batch.bad:
                bad(str(paths[i]), message.split(": ", 1)[-1], message)
            if batch.indices:
                maps = explain_batch(model, batch.images, method=method, target=target)
                for k, i in enumerate(batch.indices):
                    stem = f"{i:0{width}d}_{_safe(paths[i].stem)}"
                    row, card = _write_one(tmp, stem, str(paths[i]), batch.images[k], maps, k, model)
                    row["training"] = card["training"] = trained(str(paths[i]))
                    rows.append(row)
                    if len(cards) < HTML_MAX_IMAGES:
                        cards.append(card)
            advance(len(batch.indices) + len(batch.bad))
        if not rows:
            first = skipped[0] if skipped else ("?", "?")
            raise FastallError(
                f"none of the {len(paths)} image files could be read (first: {first[0]}: {first[1]})"
            )
        _write_csv(tmp / "explain.csv", rows, model.class_names)
        if skipped:
            _write_table(tmp / "skipped.csv", ["path", "reason"], skipped)
        meta = _meta(model, method, target, rows, skipped)
        (tmp / "explain.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "index.html").write_text(render_index(meta, cards, len(rows)), encoding="utf-8")
    return ExplainResult(Path(out), rows, skipped)


def _write_one(
    folder: Path, stem: str, path: str, pixels: torch.Tensor, maps: Maps, k: int, model: LeukemiaClassifier
) -> tuple[dict[str, Any], dict[str, Any]]:
    image = pixels.permute(1, 2, 0).contiguous().numpy()
    cam, mask = maps.cams[k], cell_mask(image)
    files = {"image": f"{stem}.png", "overlay": f"{stem}.overlay.png", "map": f"{stem}.npy"}
    original, heat = _png(image), _png(overlay(image, cam))
    (folder / files["image"]).write_bytes(original)
    (folder / files["overlay"]).write_bytes(heat)
    np.save(folder / files["map"], cam)
    probs = maps.probs[k]
    row = {
        "path": path,
        "probs": probs,
        "predicted": model.class_names[int(probs.argmax())],
        "target": model.class_names[int(maps.targets[k])],
        "mass_in_cell": mass_inside(cam, mask),
        "cell_fraction": float(mask.mean()),
        **files,
    }
    return row, {**row, "original_png": original, "overlay_png": heat}


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _safe(stem: str) -> str:
    return re.sub(r"[^\w.-]+", "_", stem)[:80] or "image"


def _write_csv(path: Path, rows: list[dict[str, Any]], class_names: list[str]) -> None:
    header = ["path", *(f"p_{c}" for c in class_names), "predicted_class", "target_class", "in_run"]
    header += ["mass_in_cell", "cell_fraction", "image", "overlay", "map"]
    body = [
        [
            r["path"],
            *(f"{p:.9g}" for p in r["probs"]),
            r["predicted"],
            r["target"],
            r.get("training", ""),
            "" if np.isnan(r["mass_in_cell"]) else f"{r['mass_in_cell']:.4f}",
            f"{r['cell_fraction']:.4f}",
            r["image"],
            r["overlay"],
            r["map"],
        ]
        for r in rows
    ]
    _write_table(path, header, body)


def _write_table(path: Path, header: list[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csvsafe.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _meta(
    model: LeukemiaClassifier,
    method: str,
    target: str,
    rows: list[dict[str, Any]],
    skipped: list[tuple[str, str]],
) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        library = f"grad-cam {version('grad-cam')}"
    except PackageNotFoundError:
        library = "grad-cam"
    name, _ = model_layer(model)
    inside = [r["mass_in_cell"] for r in rows if not np.isnan(r["mass_in_cell"])]
    kp = model.provenance.get("key_params", {})
    return {
        "format": EXPLAIN_FORMAT,
        "model": str(model.provenance.get("run") or model.provenance.get("export") or ""),
        "method": method.lower(),
        "target": target,
        "layer": f"{name}.{gradcam_path(model.backbone, name)}",
        "library": library,
        "image_size": model.image_size,
        "class_names": list(model.class_names),
        "weights": str(kp.get("weights", "")),
        "images": len(rows),
        "skipped": len(skipped),
        "mean_mass_in_cell": float(np.mean(inside)) if inside else None,
        "mean_cell_fraction": float(np.mean([r["cell_fraction"] for r in rows])),
        "fastall_version": __version__,
    }
