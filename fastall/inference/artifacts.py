"""Run artifacts: the one loader of a run folder, its head.pt, or an exported model file, with every check.

A run is opened once (:func:`open_run`): head.pt is read and validated (format, version, keys, cache key), and
the run's feature cache is read at most once, when something needs it. The model is then built in one
direction: recorded backbone weights (refused unless their sha256 is the recorded one) -> head -> checks of
image size, classes and feature dimension. An export file (:data:`EXPORT_FORMAT`, written by
:mod:`fastall.inference.export`) carries its own backbone, checked against its recorded sha256.
Nothing here unpickles: every file is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastall.data.loader import load_images
from fastall.errors import FastallError
from fastall.features.backbone import build_backbone, load_backbone, recorded_options, state_dict_sha256
from fastall.features.cache import FeatureCache, cache_key, diff_params, read_cache
from fastall.features.cut import cut_from_state, finetuned, is_cut_state
from fastall.head import HEAD_FORMAT, HEAD_VERSION, Head
from fastall.inference.model import LeukemiaClassifier
from fastall.inference.precision import calibration_pick
from fastall.preprocess import IMAGENET_MEAN, IMAGENET_STD
from fastall.system.devices import decide_precision, resolve_device
from fastall.system.formats import FileFormat

EXPORT_FORMAT, EXPORT_VERSION = "fastall-model", 1
HEAD_FILE = FileFormat(
    "head file",
    HEAD_FORMAT,
    HEAD_VERSION,
    ("state_dict", "head_config", "class_names", "cache_key", "key_params"),
    "re-run `fastall train-head`",
)
EXPORT_FILE = FileFormat("exported model", EXPORT_FORMAT, EXPORT_VERSION, rerun="re-run `fastall export`")


def safe_load(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` with every failure as one line naming ``path``."""
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
        ) from err


def head_file(run: str | Path) -> Path:
    """``RUN/head.pt`` (or RUN itself when it is a file)."""
    run = Path(run)
    path = run if run.is_file() else run / "head.pt"
    if not path.is_file():
        raise FastallError(f"{run}: no head.pt: not a fastall run folder (run `fastall train-head` first)")
    return path


def read_head(path: str | Path, blob: Any = None) -> dict[str, Any]:
    """Read (unless ``blob`` is the file's content, already read) and validate a head file."""
    path = Path(path)
    blob = safe_load(path, "head file") if blob is None else blob
    HEAD_FILE.check_record(path, blob)
    if not isinstance(blob["key_params"], dict) or not isinstance(blob["state_dict"], dict):
        raise FastallError(f"{path}: head file has a malformed key_params or state_dict")
    if cache_key(blob["key_params"]) != blob["cache_key"]:
        raise FastallError(f"{path}: recorded key_params do not match the recorded cache key (file altered)")
    return blob


def check_run_cache(record: dict[str, Any], fc: FeatureCache, head_path: Path) -> FeatureCache:
    """Refuse a cache whose key differs from the one the head was trained on, naming the differing fields."""
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


def build_head(config: Any, state: Any, where: Path) -> Head:
    """``Head.from_state`` with errors naming the file (a run's final or fold head, an export's head)."""
    try:
        return Head.from_state(config, state)
    except FastallError as err:
        raise FastallError(f"{where}: {err}") from err


@dataclass
class RunFolder:
    """An opened run: its validated head record, and its feature cache (read once, when first needed)."""

    run: Path
    head_path: Path
    record: dict[str, Any]
    cache_path: Path | None
    _cache: FeatureCache | None = field(default=None, repr=False)

    @property
    def key_params(self) -> dict[str, Any]:
        return self.record["key_params"]

    @property
    def image_size(self) -> int:
        try:
            size = int(self.key_params["image_size"])
        except (KeyError, TypeError, ValueError):
            raise FastallError(f"{self.head_path}: recorded image_size is missing or invalid") from None
        if size < 16:
            raise FastallError(f"{self.head_path}: recorded image_size {size} is too small")
        return size

    def cache(self, needed_for: str | None = None, hint: str = "") -> FeatureCache | None:
        """The run's cache, checked against the head; with ``needed_for`` its absence is an error."""
        if self._cache is not None:
            return self._cache
        try:
            if self.cache_path is None or not self.cache_path.is_file():
                raise FastallError(
                    f"{self.run}: the run's cache {self.cache_path or '(not recorded)'} is not here "
                    f"({needed_for} needs it){hint}"
                )
            fc = read_cache(self.cache_path, load_features=False)
            self._cache = check_run_cache(self.record, fc, self.head_path)
        except FastallError:
            if needed_for is not None:
                raise
        return self._cache

    def data_root(self, data: str | Path | None = None) -> Path:
        """The folder the cache's image paths are relative to: ``data``, else the one the cache records."""
        fc = self.cache("finding the run's images")
        root = data if data is not None else fc.attrs.get("data_root")
        if not root:
            raise FastallError(f"{fc.path}: the cache does not record its data root: pass --data DIR")
        root = Path(str(root))
        if not root.is_dir():
            raise FastallError(f"{root}: data root of {fc.path} is not here: pass --data DIR")
        return root

    def images(
        self, indices: np.ndarray, *, data: str | Path | None = None, needed_for: str, batch_size: int = 16
    ) -> torch.Tensor:
        """The run's own images ``indices`` (rows of its cache), decoded and resized; a bad one is fatal."""
        fc, root = self.cache(needed_for), self.data_root(data)
        paths = [root / fc.paths[i] for i in indices]
        return load_images(
            paths, self.image_size, batch_size, needed_for=f"{needed_for} needs the original images"
        )


def open_run(run: str | Path, *, cache: str | Path | None = None, blob: Any = None) -> RunFolder:
    """Read and validate RUN's head.pt once (``blob``: its content, where already read); ``cache`` replaces
    the recorded cache path."""
    head_path = head_file(run)
    record = read_head(head_path, blob)
    path = cache if cache is not None else record.get("cache_path")
    return RunFolder(Path(run), head_path, record, Path(str(path)) if path else None)


def _weights_source(folder: RunFolder, weights_path: str | Path | None) -> str:
    weights = str(folder.key_params.get("weights", ""))
    if weights_path is not None:
        return str(weights_path)
    if weights and weights != "file":
        return weights
    source = folder.key_params.get("weights_path")
    if not source:
        fc = folder.cache()
        source = (fc.attrs.get("weights_source") or None) if fc is not None else None
    if not source or not Path(str(source)).is_file():
        raise FastallError(
            f"{folder.head_path}: the run's weights file {source or '(not recorded)'} is not here: "
            "pass --weights-path FILE"
        )
    return str(source)


def recorded_backbone(folder: RunFolder, *, weights_path: str | Path | None = None) -> nn.Module:
    """Load the backbone by the recorded weights and refuse it unless its sha256 is the recorded one."""
    kp, where = folder.key_params, folder.head_path
    source = _weights_source(folder, weights_path)
    options = recorded_options(kp)
    name = options["backbone"]
    backbone, info = load_backbone(source, seed=int(kp.get("seed", 0)), **options)
    recorded = kp.get("weights_sha256")
    if recorded and info.sha256 != recorded:
        raise FastallError(
            f"{where}: backbone weights sha256 {info.sha256[:12]}... ({source}) differ from "
            f"the recorded {str(recorded)[:12]}... ({kp.get('weights', '')}): wrong weights"
        )
    if info.name != name:
        raise FastallError(f"{where}: backbone {info.name!r} differs from the recorded {name!r}")
    return backbone


def model_from_run(
    folder: RunFolder, *, weights_path: str | Path | None = None, device: str | torch.device = "cpu"
) -> LeukemiaClassifier:
    """The end-to-end model of an opened run, on ``device``, checked for consistency."""
    device = resolve_device(device)
    kp, record = folder.key_params, folder.record
    size = folder.image_size
    backbone = recorded_backbone(folder, weights_path=weights_path)
    if record.get("finetune"):  # a finetune run: image -> front -> its stage -> head
        backbone = finetuned(
            backbone, str(recorded_options(kp)["backbone"]), record["finetune"], str(folder.head_path)
        )
    model = LeukemiaClassifier(
        backbone,
        build_head(record["head_config"], record["state_dict"], folder.head_path),
        image_size=size,
        class_names=record["class_names"],
        mean=kp.get("mean", IMAGENET_MEAN),
        std=kp.get("std", IMAGENET_STD),
        provenance={
            "run": str(folder.run.resolve()),
            "head": str(folder.head_path),
            "cache_key": record["cache_key"],
            "cache_path": record.get("cache_path"),
            "key_params": kp,
        },
    ).to(device)
    _check_consistency(model, folder.head_path)
    return model


def load_run(
    run: str | Path,
    *,
    weights_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    cache: str | Path | None = None,
) -> LeukemiaClassifier:
    """Rebuild RUN's model from ``RUN/head.pt``; with ``cache`` also refuse a cache it was not trained on."""
    folder = open_run(run, cache=cache)
    if cache is not None:
        folder.cache("the cache check", hint=": pass --cache PATH")
    return model_from_run(folder, weights_path=weights_path, device=device)


def model_from_export(blob: Any, path: Path, device: str | torch.device = "cpu") -> LeukemiaClassifier:
    """The model in an export file's content (already read), at its stored precision where it runs."""
    device = resolve_device(device)
    EXPORT_FILE.check_record(path, blob)
    options = recorded_options((blob.get("provenance") or {}).get("key_params", {}))
    try:
        name, state = options.pop("backbone"), blob["backbone_state_dict"]
        if isinstance(state, dict) and is_cut_state(state):
            layer = str(blob["provenance"]["key_params"].get("maps"))
            backbone = cut_from_state(name, state, layer, "the exported fine-tuned backbone")
        else:
            backbone = build_backbone(name, state, "the exported backbone", **options)
    except (FastallError, KeyError, TypeError, AttributeError) as err:
        raise FastallError(f"{path}: backbone weights do not fit: {str(err).splitlines()[0]}") from err
    if state_dict_sha256(backbone.state_dict()) != blob.get("backbone_state_sha256"):
        raise FastallError(f"{path}: backbone checksum mismatch (file altered or corrupt)")
    model = LeukemiaClassifier(
        backbone,
        build_head(blob.get("head_config"), blob.get("head_state_dict"), path),
        image_size=blob["image_size"],
        class_names=blob["class_names"],
        mean=blob["mean"],
        std=blob["std"],
        provenance={**blob.get("provenance", {}), "export": str(path)},
    ).to(device)
    _check_consistency(model, path)
    state = blob.get("int8_state_dict")
    stored = blob.get("precision", "int8" if state is not None else "fp32")
    if stored == "int8" and state is not None and device.type == "cpu":
        return model.optimize("int8", int8_state=state)
    if stored in ("bf16", "fp16") and (device.type == "cuda" or stored == "bf16"):
        return model.optimize(stored)
    return model


def load_export(path: str | Path, *, device: str | torch.device = "cpu") -> LeukemiaClassifier:
    """Load a file written by `fastall export`; its backbone checksum must match."""
    path = Path(path)
    return model_from_export(safe_load(path, "exported model"), path, device)


def _open(path: Path) -> tuple[Any, RunFolder | None]:
    """``(export content, None)`` for an export file, else ``(None, opened run)``: each file read once."""
    if path.is_file() and path.name != "head.pt":
        blob = safe_load(path, "model or head file")
        if isinstance(blob, dict) and blob.get("format") == EXPORT_FORMAT:
            return blob, None
        return None, open_run(path, blob=blob)
    return None, open_run(path)


def load_model(
    path: str | Path, *, device: str | torch.device = "cpu", weights_path: str | Path | None = None
) -> LeukemiaClassifier:
    """A run folder, its head.pt, or a file written by `fastall export` (device: auto, cpu, cuda, cuda:N)."""
    path = Path(path)
    blob, folder = _open(path)
    if folder is None:
        return model_from_export(blob, path, device)
    return model_from_run(folder, weights_path=weights_path, device=device)


def load_for_inference(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    backend: str = "auto",
    weights_path: str | Path | None = None,
) -> LeukemiaClassifier:
    """`predict`'s loader: a run or an export at ``precision`` (None: the model's own, e.g. an export's
    int8; auto: the one resolver's choice) and ``backend``. fp32 runs eagerly unless a backend is named;
    int8 for a run is calibrated on the run's own images."""
    path = Path(path)
    blob, folder = _open(path)
    if folder is None:
        model = model_from_export(blob, path, device)
    else:
        model = model_from_run(folder, weights_path=weights_path, device=device)
    if precision is not None:
        precision = decide_precision(
            precision, model.device, allowed=("fp32", "bf16", "fp16", "int8")
        ).precision
    wanted = precision or model.precision
    if wanted == model.precision and backend in ("auto", model.backend):
        return model
    calibration, state = None, model.int8_state()
    if wanted == "int8" and state is None:
        if folder is None:
            raise FastallError(
                f"{path}: this exported model has no int8 state: export it with "
                "`fastall export --precision int8` (or auto)"
            )
        fc = folder.cache("int8 calibration")
        calibration = folder.images(calibration_pick(fc.labels), needed_for="int8 calibration")
    if wanted == "fp32" and backend == "auto":
        backend = "eager"
    return model.optimize(
        wanted, calibration=calibration, int8_state=state if wanted == "int8" else None, backend=backend
    )


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
