"""ONNX export for the edge: uint8 pixels at the run's image size -> logits and probabilities, one graph.

The graph holds the shared preprocessing (:func:`fastall.preprocess.preprocess`: /255 and ImageNet
standardisation; no resize, the input is already at the run's size), the fp32 backbone and the head. It is
written with ``torch.onnx.export`` and checked with ONNX Runtime against the PyTorch fp32 path on the run's
own images (class agreement >= 99.5%, |Δprob| <= 1e-3) before it replaces ``out``. Like the torch export it
records a sha256 (of the graph, weights included, in the ``graph_sha256`` metadata), checked by
:func:`open_fastall_onnx` before a file is used: a corrupted file is refused, not timed. onnx and onnxruntime
are the optional extra ``onnx``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastall import __version__
from fastall.errors import FastallError
from fastall.inference.artifacts import model_from_run, open_run
from fastall.inference.model import LeukemiaClassifier
from fastall.inference.precision import compare_logits, logits, pick_images
from fastall.preprocess import preprocess
from fastall.system.events import Reporter, silent
from fastall.system.files import atomic_write, describe_write_error
from fastall.system.runfolder import check_output_file

EXTRA = "pip install 'fastall[onnx]'"
MAX_DPROB = 1e-3
OPSET = 20
INPUT, OUTPUTS = "pixels", ("logits", "probabilities")
GRAPH_SHA256 = "graph_sha256"


def require(what: str) -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or one line naming the extra to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise FastallError(f"{what} needs the optional extra onnx ({err.name} is missing): {EXTRA}") from err
    return onnx, onnxruntime


class Deployable(nn.Module):
    """uint8 ``[B, 3, S, S]`` at the run's size -> ``(logits, probabilities)``, fp32, no resize."""

    def __init__(self, model: LeukemiaClassifier) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head
        self.size, self.mean, self.std = model.image_size, model.mean, model.std

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.backbone(preprocess(images, self.size, self.mean, self.std)))
        return out, torch.softmax(out, dim=1)


def export_onnx(
    run: str | Path,
    out: str | Path,
    *,
    images: int = 200,
    data: str | Path | None = None,
    weights_path: str | Path | None = None,
    reporter: Reporter | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write RUN's model as ONNX at ``out`` once ONNX Runtime agrees with PyTorch fp32 on the run's images."""
    reporter = reporter or silent()
    require("--format onnx")
    out = check_output_file(out, [run])
    if not out.parent.is_dir():
        raise FastallError(f"--out {out}: folder {out.parent} does not exist")
    folder = open_run(run)
    model = model_from_run(folder, weights_path=weights_path)
    pixels = folder.images(
        pick_images(folder.cache("checking the ONNX model").labels, images),
        data=data,
        needed_for="checking the ONNX model",
    )
    proto = _graph(Deployable(model).eval(), model.image_size, metadata(model))
    check = check_onnx(proto.SerializeToString(), model, pixels)
    reporter.info(
        f"onnxruntime agrees with PyTorch fp32 on {check['agreement']:.1%} of {check['images']} run "
        f"images (max |Δprob| {check['max_dprob']:.2g})"
    )
    if not check["passed"]:
        raise FastallError(
            f"the ONNX model agrees with PyTorch fp32 on {check['agreement']:.1%} of {check['images']} "
            f"images, max |Δprob| {check['max_dprob']:.2g} (needs >= 99.5% and <= {MAX_DPROB:g}): "
            "not written"
        )
    _annotate(proto, {"onnx_check": json.dumps(check), GRAPH_SHA256: graph_sha256(proto)})
    data = proto.SerializeToString()  # one file, the weights inside it (no external data)
    try:
        atomic_write(out, lambda fh: fh.write(data), point="onnx")
    except OSError as err:
        raise FastallError(f"{out}: cannot write: {describe_write_error(err, out.parent)}") from err
    return out, check


def _graph(module: nn.Module, size: int, meta: dict[str, str]) -> Any:
    """The ONNX ModelProto of ``module`` (dynamic batch), with ``meta`` as metadata_props."""
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    _annotate(proto, meta)
    return proto


def _annotate(proto: Any, meta: dict[str, str]) -> None:
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def check_onnx(model_bytes: bytes, model: LeukemiaClassifier, pixels: torch.Tensor) -> dict[str, Any]:
    """ONNX Runtime (the serialised graph) against eager PyTorch fp32 on ``pixels``: agreement, |Δprob|."""
    session = session_for(model_bytes)
    fast = torch.from_numpy(run_onnx(session, pixels.numpy())[0])
    trial = compare_logits(
        "fp32", "onnxruntime", logits(model.optimize("fp32", backend="eager"), pixels), fast
    )
    passed = trial.agrees and trial.max_dprob <= MAX_DPROB
    return {**trial.to_dict(), "max_dprob_allowed": MAX_DPROB, "passed": passed}


def metadata(model: LeukemiaClassifier) -> dict[str, str]:
    return {
        "fastall_format": "fastall-onnx",
        "fastall_version": __version__,
        "torch_version": str(torch.__version__),
        "image_size": str(model.image_size),
        "class_names": json.dumps(model.class_names),
        "input": "uint8 RGB [batch, 3, image_size, image_size], resized as `fastall extract` does",
        "run": str(model.provenance.get("run", "")),
        "cache_key": str(model.provenance.get("cache_key", "")),
    }


def session_for(path: str | Path | bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of a file (or a serialised model); threads wait passively where OpenMP
    does (``OMP_WAIT_POLICY``)."""
    _, ort = require("ONNX Runtime inference")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        model = path if isinstance(path, bytes) else str(path)
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for bad files
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        where = "the exported graph" if isinstance(path, bytes) else path
        raise FastallError(f"{where}: not a readable ONNX model ({first})") from err


def graph_sha256(proto: Any) -> str:
    """sha256 of the serialised graph (nodes and weights; the metadata is outside it)."""
    return hashlib.sha256(proto.graph.SerializeToString(deterministic=True)).hexdigest()


def open_fastall_onnx(path: str | Path, threads: int | None = None) -> Any:
    """A session of an ONNX file made by ``fastall export --format onnx``: refused, in one line, when it is
    another model (its input, outputs or metadata differ) or when its graph no longer has the recorded
    sha256 (a corrupted or edited file)."""
    onnx, _ = require("ONNX Runtime inference")
    try:
        proto = onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - protobuf raises its own types for bad files
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise FastallError(f"{path}: not a readable ONNX model ({first})") from err
    meta = {entry.key: entry.value for entry in proto.metadata_props}
    inputs = [(i.name, i.type.tensor_type.elem_type) for i in proto.graph.input]
    outputs = tuple(o.name for o in proto.graph.output)
    names = [name for name, _ in inputs]
    problems = [
        (meta.get("fastall_format") != "fastall-onnx", "it has no fastall metadata"),
        (names != [INPUT], f"its inputs are {names}, not [{INPUT!r}]"),
        (bool(inputs) and inputs[0][1] != onnx.TensorProto.UINT8, "its input is not uint8"),
        (outputs != OUTPUTS, f"its outputs are {list(outputs)}, not {list(OUTPUTS)}"),
        (bool(inputs) and not _dynamic_batch(proto.graph.input[0]), "its batch size is fixed"),
    ]
    foreign = next((message for failed, message in problems if failed), None)
    if foreign:
        raise FastallError(
            f"{path}: not an ONNX model made by `fastall export --format onnx` ({foreign}): fastall takes "
            f"uint8 {INPUT!r} [batch, 3, size, size] -> {', '.join(OUTPUTS)}"
        )
    recorded = meta.get(GRAPH_SHA256)
    if recorded is not None and graph_sha256(proto) != recorded:
        raise FastallError(
            f"{path}: the graph's sha256 differs from the one recorded at export (a corrupted or edited "
            "file): export it again"
        )
    return session_for(path, threads)


def _dynamic_batch(value_info: Any) -> bool:
    dims = value_info.type.tensor_type.shape.dim
    return len(dims) == 4 and not dims[0].HasField("dim_value")


def image_size_of(session: Any) -> int:
    shape = session.get_inputs()[0].shape
    if len(shape) != 4 or not isinstance(shape[-1], int) or isinstance(shape[0], int):
        raise FastallError(
            f"ONNX model input {shape}: expected uint8 [batch, 3, size, size] with a dynamic batch"
        )
    return int(shape[-1])


def run_onnx(session: Any, pixels: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, probabilities)`` of uint8 ``pixels``, ``batch_size`` images per call."""
    parts = [
        session.run(None, {INPUT: pixels[i : i + batch_size]}) for i in range(0, len(pixels), batch_size)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
