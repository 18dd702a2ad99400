"""`fastall predict`: a probability and a label for every readable image; bad files reported and skipped."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastall.data.loader import default_workers, iter_batches
from fastall.data.walk import IMAGE_EXTENSIONS, find_images
from fastall.errors import FastallError
from fastall.features.augment import draw_view_params, resolve_fill
from fastall.inference.model import LeukemiaClassifier
from fastall.inference.shift import Radius
from fastall.system import csvsafe
from fastall.system.events import Reporter, silent
from fastall.system.runfolder import check_output_file

TTA_SEED = 0


@dataclass
class Predictions:
    paths: list[str]
    probs: np.ndarray
    class_names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    precision: str = "fp32"
    views: int = 1
    ood: np.ndarray | None = None  # bool [N]: outside the run's training-feature radius (None: not measured)

    @property
    def labels(self) -> list[str]:
        return [self.class_names[i] for i in self.probs.argmax(axis=1)] if len(self.paths) else []


def check_out(out: str | Path, inputs: Sequence[str | Path]) -> Path:
    """Refuse an ``--out`` that would overwrite an input (the model, an image) or any image: predictions are
    a CSV, so an image extension is refused too."""
    out = Path(out)
    if out.suffix.lower() in IMAGE_EXTENSIONS:
        raise FastallError(
            f"--out {out}: has an image extension; predictions are a CSV (e.g. {out.stem}.csv)"
        )
    if out.is_dir():
        raise FastallError(f"--out {out}: is a folder; give a file name such as {out / 'predictions.csv'}")
    check_output_file(out, list(inputs), text=True)
    check_output_file(sidecar_of(out), list(inputs), text=True)
    return out


def predict_paths(
    model: LeukemiaClassifier,
    inputs: Sequence[str | Path],
    *,
    batch_size: int = 32,
    tta: int = 1,
    skip_bad: bool = True,
    workers: int | None = None,
    reporter: Reporter | None = None,
    share: tuple[int, int] = (0, 1),
    radius: Radius | None = None,
) -> Predictions:
    """Class probabilities for each image in ``inputs`` (files, folders); ``tta`` views averaged.

    A bad file is skipped and reported to ``reporter`` (a ``skipped`` warning), or with ``skip_bad=False``
    raised; the images done are its ``predict`` task.
    With ``radius`` each image's view-0 feature is also flagged ood (outside it) or not.
    ``share=(rank, world)``: only every world-th image from ``rank`` (one rank of a torchrun job; missing
    inputs are reported by rank 0 only, and a share may be empty).
    """
    if tta < 1:
        raise FastallError(f"--tta needs at least 1 view, got {tta}")
    reporter = reporter or silent()
    paths, problems = find_images(inputs)
    skipped: list[tuple[str, str]] = []
    for path, reason in problems if share[0] == 0 else ():
        _bad(f"{path}: {reason}", path, reason, skipped, skip_bad, reporter)
    if not paths:
        first = f" ({problems[0][0]}: {problems[0][1]})" if problems else ""
        raise FastallError(f"no image files found in {', '.join(map(str, inputs))}{first}")
    order = range(share[0], len(paths), share[1])
    workers = default_workers(model.device) if workers is None else workers
    out_paths, out_probs = [], [np.empty((0, len(model.class_names)), dtype=np.float32)]
    out_ood = [np.zeros(0, bool)]
    batches = iter_batches(
        [paths[i] for i in order],
        model.image_size,
        batch_size,
        workers=workers,
        pin_memory=model.device.type == "cuda",
    )
    with reporter.task("predict", len(order), unit="images") as advance:
        for batch in batches:
            for k, message in batch.bad:
                _bad(message, str(paths[order[k]]), message.split(": ", 1)[-1], skipped, skip_bad, reporter)
            if batch.indices:
                probs, features = _probs(model, batch.images, [order[k] for k in batch.indices], tta)
                out_probs.append(probs)
                if radius is not None:
                    out_ood.append(radius.outside(features))
                out_paths.extend(str(paths[order[k]]) for k in batch.indices)
            advance(len(batch.indices) + len(batch.bad))
    if not out_paths and share[1] == 1:
        raise FastallError(
            f"none of the {len(paths)} image files could be read (first: {skipped[0][0]}: {skipped[0][1]})"
        )
    ood = np.concatenate(out_ood) if radius is not None else None
    return Predictions(
        out_paths, np.concatenate(out_probs), list(model.class_names), skipped, model.precision, tta, ood
    )


def _bad(
    message: str,
    path: str,
    reason: str,
    skipped: list,
    skip_bad: bool,
    reporter: Reporter,
) -> None:
    if not skip_bad:
        raise FastallError(f"{message} (use --skip-bad to skip unreadable files)")
    skipped.append((path, reason))
    reporter.warn("skipped", message)


@torch.inference_mode()
def _probs(
    model: LeukemiaClassifier, images: torch.Tensor, indices: list[int], tta: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities [B, K], view-0 features [B, D])``."""
    if images.shape[0] == 1:  # oneDNN takes another path for batch 1: keep rows batch-composition independent
        probs, features = _probs(model, images.expand(2, *images.shape[1:]), indices * 2, tta)
        return probs[:1], features[:1]
    fill = None
    if tta > 1:  # the fill the run's cache was extracted with (black for runs made before --fill)
        fill = resolve_fill(images, model.provenance.get("key_params", {}).get("fill", "black"))
    images = images.to(model.device, non_blocking=True)
    params = torch.from_numpy(draw_view_params(TTA_SEED, indices, tta, fill)) if tta > 1 else None
    plain = model.forward_features(images, None if params is None else params[:, 0])
    total = torch.softmax(model.forward_head(plain), dim=1)
    for v in range(1, tta):
        total = total + torch.softmax(model(images, params[:, v]), dim=1)
    return (total / tta).cpu().numpy(), plain.float().cpu().numpy()


def sidecar_of(out: Path) -> Path:
    """Where the files skipped by a predict writing ``out`` are listed."""
    return out.with_name(out.stem + ".skipped.csv")


def write_predictions(preds: Predictions, out: str | Path) -> Path | None:
    """Write ``out`` (path, predicted_class, p_<class>...) and, if any file was skipped,
    ``<out>.skipped.csv``.

    Both are written atomically; a stale sidecar from an earlier run is removed. Returns the sidecar path.
    """
    out = Path(out)
    buf = io.StringIO()
    writer = csvsafe.writer(buf, lineterminator="\n")
    ood = [] if preds.ood is None else ["ood"]
    writer.writerow(["path", "predicted_class", *(f"p_{c}" for c in preds.class_names), *ood])
    flags = preds.ood if preds.ood is not None else [None] * len(preds.paths)
    for path, label, row, flag in zip(preds.paths, preds.labels, preds.probs, flags, strict=True):
        writer.writerow([path, label, *(f"{p:.9g}" for p in row), *([int(flag)] if ood else [])])
    sidecar = sidecar_of(out)
    if not preds.skipped:
        sidecar.unlink(missing_ok=True)
        _atomic_text(out, buf.getvalue())
        return None
    side = io.StringIO()
    writer = csvsafe.writer(side, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows(preds.skipped)
    _atomic_text(sidecar, side.getvalue())  # first: a full disk never leaves the CSV without its sidecar
    try:
        _atomic_text(out, buf.getvalue())
    except FastallError:
        sidecar.unlink(missing_ok=True)
        raise
    return sidecar


def _atomic_text(path: Path, text: str) -> None:
    from fastall.system.files import atomic_write_text, describe_write_error

    try:
        atomic_write_text(path, text)
    except OSError as err:
        raise FastallError(f"{path}: cannot write ({describe_write_error(err, path.parent)})") from err
