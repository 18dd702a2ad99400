"""The end-to-end classifier: uint8 pixels -> shared preprocessing -> frozen backbone -> trained head.

``LeukemiaClassifier.from_run(RUN)`` rebuilds it from a run folder and refuses any mismatch with the recorded
provenance; ``export_run`` writes one self-contained file that ``from_export`` loads (``weights_only=True``).
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastall import __version__
from fastall.errors import FastallError
from fastall.features.backbone import load_backbone, state_dict_sha256
from fastall.head import Head
from fastall.inference.runtime import Runtime, build_runtime
from fastall.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess
from fastall.training.engine import resolve_device

HEAD_FORMAT, HEAD_VERSION = "fastall-head", 1
EXPORT_FORMAT, EXPORT_VERSION = "fastall-model", 1
NAMED_WEIGHTS = ("imagenet1k_v1", "imagenet1k_v2", "none")
_HEAD_KEYS = ("state_dict", "head_config", "class_names", "cache_key", "key_params")


class LeukemiaClassifier(nn.Module):
    """A timm-like model over uint8 images ``[B, 3, H, W]`` (any H, W; resized as in ``extract``)."""

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
    ) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.head = head.eval().requires_grad_(False)
        self.image_size = int(image_size)
        self.class_names = list(class_names)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.provenance = dict(provenance or {})
        self.runtime: Runtime | None = None

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
        """Run the backbone at ``precision`` from now on (calibration: uint8 images, for int8).

        The fp32 ``backbone`` stays as the reference; ``optimize("fp32", backend="eager")`` returns to it.
        """
        example = self.preprocess(torch.zeros(1, 3, self.image_size, self.image_size, dtype=torch.uint8))
        calib = None
        if calibration is not None:
            calib = torch.cat([self.preprocess(c) for c in calibration.split(16)])
        if precision == "fp32" and backend == "eager":
            self.runtime = None
        else:
            self.runtime = build_runtime(
                self.backbone,
                precision,
                device=self.device,
                example=example,
                calibration=calib,
                int8_state=int8_state,
                backend=backend,
            )
        return self

    def int8_state(self) -> dict[str, torch.Tensor] | None:
        """The quantised backbone's state (scales included), to ship in an export; None unless int8."""
        if self.runtime is None or self.runtime.precision != "int8":
            return None
        return self.runtime.int8_state

    @classmethod
    def from_run(
        cls,
        run: str | Path,
        *,
        weights_path: str | Path | None = None,
        device: str | torch.device = "cpu",
        cache: str | Path | None = None,
    ) -> LeukemiaClassifier:
        """Rebuild from ``RUN/head.pt``, checking the backbone (sha256), image size, classes and features."""
        device = _device(device)
        head_path = head_file(run)
        record = load_head(head_path)
        if cache is not None:
            check_cache(record, cache, head_path)
        kp = record["key_params"]
        size = _image_size(kp, head_path)
        backbone = load_recorded_backbone(record, head_path, weights_path=weights_path)
        head = _build_head(record["head_config"], record["state_dict"], head_path)
        model = cls(
            backbone,
            head,
            image_size=size,
            class_names=record["class_names"],
            mean=kp.get("mean", IMAGENET_MEAN),
            std=kp.get("std", IMAGENET_STD),
            provenance={
                "run": str(Path(run).resolve()),
                "head": str(head_path),
                "cache_key": record["cache_key"],
                "cache_path": record.get("cache_path"),
                "key_params": kp,
            },
        )
        model.to(device)
        _check_consistency(model, head_path)
        return model

    @classmethod
    def from_export(cls, path: str | Path, *, device: str = "cpu") -> LeukemiaClassifier:
        """Load a file written by :func:`export_run`; its backbone checksum must match."""
        path = Path(path)
        return cls._from_blob(_safe_load(path, "exported model"), path, _device(device))

    @classmethod
    def _from_blob(cls, blob: Any, path: Path, device: torch.device) -> LeukemiaClassifier:
        if not isinstance(blob, dict) or blob.get("format") != EXPORT_FORMAT:
            raise FastallError(
                f"{path}: not a fastall exported model (format {_fmt(blob)!r}, expected {EXPORT_FORMAT!r})"
            )
        if blob.get("format_version") != EXPORT_VERSION:
            raise FastallError(
                f"{path}: exported model format version {blob.get('format_version')!r}, "
                f"this fastall reads version {EXPORT_VERSION}"
            )
        try:
            backbone = _resnet50_from_state(blob["backbone_state_dict"])
        except (RuntimeError, KeyError, TypeError) as err:
            raise FastallError(f"{path}: backbone weights do not fit: {str(err).splitlines()[0]}") from None
        if state_dict_sha256(backbone.state_dict()) != blob.get("backbone_state_sha256"):
            raise FastallError(f"{path}: backbone checksum mismatch (file altered or corrupt)")
        head = _build_head(blob["head_config"], blob["head_state_dict"], path)
        model = cls(
            backbone,
            head,
            image_size=blob["image_size"],
            class_names=blob["class_names"],
            mean=blob["mean"],
            std=blob["std"],
            provenance={**blob.get("provenance", {}), "export": str(path)},
        )
        model.to(device)
        _check_consistency(model, path)
        stored = blob.get("precision", "int8" if blob.get("int8_state_dict") is not None else "fp32")
        if stored == "int8" and blob.get("int8_state_dict") is not None and device.type == "cpu":
            model.optimize("int8", int8_state=blob["int8_state_dict"])
        elif stored in ("bf16", "fp16") and (device.type == "cuda" or stored == "bf16"):
            model.optimize(stored)
        return model


def load_model(
    path: str | Path, *, device: str = "cpu", weights_path: str | Path | None = None
) -> LeukemiaClassifier:
    """A run folder, its head.pt, or a file written by ``fastall export`` (device: auto, cpu or cuda)."""
    path = Path(path)
    device = _device(device)
    if path.is_file() and path.name != "head.pt":
        blob = _safe_load(path, "model or head file")
        if isinstance(blob, dict) and blob.get("format") == EXPORT_FORMAT:
            return LeukemiaClassifier._from_blob(blob, path, device)
    return LeukemiaClassifier.from_run(path, weights_path=weights_path, device=device)


def _device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(str(device))


def head_file(run: str | Path) -> Path:
    """``RUN/head.pt`` (or RUN itself when it is a file)."""
    run = Path(run)
    path = run if run.is_file() else run / "head.pt"
    if not path.is_file():
        raise FastallError(f"{run}: no head.pt: not a fastall run folder (run `fastall train-head` first)")
    return path


def _safe_load(path: Path, what: str) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")  # quantised tensors
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FastallError(f"{path}: no such file") from None
    except PermissionError:
        raise FastallError(f"{path}: permission denied") from None
    except pickle.UnpicklingError:
        raise FastallError(
            f"{path}: refused: it holds Python objects beyond tensors and plain data, which "
            f"fastall never unpickles (not a fastall {what})"
        ) from None
    except Exception as err:  # zip and torch errors: not a torch file at all
        first = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise FastallError(
            f"{path}: not a fastall {what}: not a readable torch file, truncated or corrupt? "
            f"({type(err).__name__}: {first})"
        ) from None


def _fmt(blob: Any) -> Any:
    return blob.get("format") if isinstance(blob, dict) else type(blob).__name__


def load_head(path: str | Path) -> dict[str, Any]:
    """Read and validate a head file (never unpickles: ``weights_only=True``)."""
    path = Path(path)
    blob = _safe_load(path, "head file")
    if not isinstance(blob, dict) or blob.get("format") != HEAD_FORMAT:
        raise FastallError(
            f"{path}: not a fastall head file (format {_fmt(blob)!r}, expected {HEAD_FORMAT!r})"
        )
    if blob.get("format_version") != HEAD_VERSION:
        raise FastallError(
            f"{path}: head format version {blob.get('format_version')!r}, this fastall reads "
            f"version {HEAD_VERSION}: re-run `fastall train-head`"
        )
    missing = [k for k in _HEAD_KEYS if k not in blob]
    if missing:
        raise FastallError(f"{path}: head file is missing {', '.join(missing)}")
    if not isinstance(blob["key_params"], dict) or not isinstance(blob["state_dict"], dict):
        raise FastallError(f"{path}: head file has a malformed key_params or state_dict")
    from fastall.features.cache import cache_key

    if cache_key(blob["key_params"]) != blob["cache_key"]:
        raise FastallError(f"{path}: recorded key_params do not match the recorded cache key (file altered)")
    return blob


def check_cache(record: dict[str, Any], cache: Any, head_path: Path) -> Any:
    """Refuse a cache whose key differs from the one the head was trained on, naming the differing fields."""
    from fastall.features.cache import FeatureCache, diff_params, read_cache

    fc = cache if isinstance(cache, FeatureCache) else read_cache(cache, load_features=False)
    if fc.key != record["cache_key"]:
        diffs = diff_params(record["key_params"], fc.key_params) or ["cache key"]
        raise FastallError(
            f"{fc.path}: cache does not match the run {head_path.parent} (run -> cache): " + "; ".join(diffs)
        )
    if list(fc.class_names) != list(record["class_names"]):
        raise FastallError(
            f"{fc.path}: cache classes {fc.class_names} differ from the run's {record['class_names']}"
        )
    return fc


def _image_size(kp: dict[str, Any], where: Path) -> int:
    try:
        size = int(kp["image_size"])
    except (KeyError, TypeError, ValueError):
        raise FastallError(f"{where}: recorded image_size is missing or invalid") from None
    if size < 16:
        raise FastallError(f"{where}: recorded image_size {size} is too small")
    return size


def load_recorded_backbone(
    record: dict[str, Any], where: Path, *, weights_path: str | Path | None = None
) -> nn.Module:
    """Load the backbone by the recorded weights and refuse it unless its sha256 is the recorded one."""
    kp = record["key_params"]
    weights = str(kp.get("weights", ""))
    if weights_path is not None:
        source = str(weights_path)
    elif weights in NAMED_WEIGHTS:
        source = weights
    else:
        source = _recorded_weights_file(record)
        if not source or not Path(source).is_file():
            raise FastallError(
                f"{where}: the run's weights file {source or '(not recorded)'} is not here: "
                "pass --weights-path FILE"
            )
    backbone, info = load_backbone(source, seed=int(kp.get("seed", 0)))
    recorded = kp.get("weights_sha256")
    if recorded and info.sha256 != recorded:
        raise FastallError(
            f"{where}: backbone weights sha256 {info.sha256[:12]}... ({source}) differ from "
            f"the recorded {str(recorded)[:12]}... ({weights}): wrong weights"
        )
    if kp.get("backbone") and info.name != kp["backbone"]:
        raise FastallError(f"{where}: backbone {info.name!r} differs from the recorded {kp['backbone']!r}")
    return backbone


def _recorded_weights_file(record: dict[str, Any]) -> str | None:
    """A weights file's path: recorded in key_params, or in the provenance of the run's own cache."""
    from fastall.features.cache import read_cache

    kp = record["key_params"]
    if kp.get("weights_path"):
        return str(kp["weights_path"])
    cache_path = record.get("cache_path")
    if not cache_path or not Path(cache_path).is_file():
        return None
    try:
        fc = read_cache(cache_path, load_features=False)
    except FastallError:
        return None
    return str(fc.attrs.get("weights_source") or "") or None if fc.key == record["cache_key"] else None


def _resnet50_from_state(state: dict[str, torch.Tensor]) -> nn.Module:
    from torchvision.models import resnet50

    with torch.device("meta"):
        model = resnet50()
    model.fc = nn.Identity()
    model.load_state_dict(state, assign=True)
    return model.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def _build_head(config: Any, state: Any, where: Path) -> Head:
    try:
        head = Head(**config)
        head.load_state_dict(state)
    except (TypeError, RuntimeError, KeyError) as err:
        raise FastallError(
            f"{where}: head weights do not fit head_config {config}: {str(err).splitlines()[0][:160]}"
        ) from None
    return head.eval()


def _check_consistency(model: LeukemiaClassifier, where: Path) -> None:
    if len(model.class_names) != model.head.classes:
        raise FastallError(
            f"{where}: {len(model.class_names)} class names but the head has {model.head.classes} outputs"
        )
    size = model.image_size
    with torch.inference_mode():
        dim = model.forward_features(torch.zeros(1, 3, size, size, dtype=torch.uint8)).shape[1]
    if dim != model.head.in_features:
        raise FastallError(
            f"{where}: backbone gives {dim} features but the head expects {model.head.in_features}"
        )
    recorded = model.provenance.get("key_params", {}).get("feature_dim")
    if recorded is not None and int(recorded) != dim:
        raise FastallError(f"{where}: backbone gives {dim} features but the cache recorded {recorded}")


def export_run(
    run: str | Path,
    out: str | Path,
    *,
    weights_path: str | Path | None = None,
    calibration: torch.Tensor | None = None,
) -> Path:
    """Write RUN's model as one file (atomic); with ``calibration`` images also its int8 state."""
    model = LeukemiaClassifier.from_run(run, weights_path=weights_path)
    if calibration is not None:
        model.optimize("int8", calibration=calibration)
    return export_model(model, out)


def export_model(model: LeukemiaClassifier, out: str | Path, *, precision_check: dict | None = None) -> Path:
    """Write ``model``: fp32 backbone and head, preprocessing, classes, provenance, and its CPU precision
    (with the int8 state if int8) and how well that precision agreed with fp32 (``precision_check``)."""
    state = {k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()}
    blob = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "backbone_state_dict": state,
        "backbone_state_sha256": state_dict_sha256(state),
        "head_state_dict": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
        "head_config": model.head.config(),
        "image_size": model.image_size,
        "mean": list(model.mean),
        "std": list(model.std),
        "class_names": model.class_names,
        "int8_state_dict": model.int8_state(),
        "precision": model.precision,
        "precision_check": _plain(precision_check),
        "provenance": {
            **_plain(model.provenance),
            "fastall_version": __version__,
            "torch_version": str(torch.__version__),
        },
    }
    return atomic_save(blob, out)


def _plain(value: Any) -> Any:
    """Only str/int/float/bool/None/list/dict, so that ``weights_only`` loading accepts it."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if type(value) in (int, float, bool, type(None)):
        return value
    return str(value)


def atomic_save(obj: Any, out: str | Path) -> Path:
    from fastall.system.files import atomic_torch_save, describe_write_error

    out = Path(out)
    try:
        return atomic_torch_save(obj, out)
    except OSError as err:
        raise FastallError(f"{out}: cannot write: {describe_write_error(err, out.parent)}") from None
