"""`fastall predict` under torchrun: every rank predicts a strided share of the files into a part file beside
the output, and rank 0 joins the parts into the one CSV, in input order (the same file as one process writes).

Part files (``OUT.part-R-of-W.npz``, written whole or not at all) sit beside ``--out``: on several machines
``--out`` must be on a file system every node sees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastall.data.loader import default_workers
from fastall.data.walk import find_images
from fastall.errors import FastallError
from fastall.inference.predict import Predictions, predict_paths
from fastall.system.distributed import DEFAULT_TIMEOUT, DistEnv, Group, rank_device
from fastall.system.files import atomic_write


def predict_distributed(
    env: DistEnv,
    load: Callable[[torch.device], Any],
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    device: str = "cpu",
    timeout: float = DEFAULT_TIMEOUT,
    **options: Any,
) -> Predictions | None:
    """This rank's part of a torchrun predict (call it on every rank): ``load(torch.device)`` gives the model,
    ``options`` go to :func:`predict_paths`. Rank 0 returns every row, in input order; the others None."""
    out = Path(out)
    device = rank_device(device, env)
    if options.get("workers") is None:
        options["workers"] = env.workers(default_workers(device))
    with Group(env, device, timeout) as group:
        try:
            model = load(torch.device(device))
            error = None
        except FastallError as err:
            error = str(err)
        errors = group.all_gather(error)
        first = next(((r, e) for r, e in enumerate(errors) if e), None)
        if first is not None:
            raise FastallError(error or f"rank {first[0]}: {first[1]}")
        preds = predict_paths(model, inputs, share=(env.rank, env.world), **options)
        _save_part(preds, _part(out, env.rank, env.world))
        group.wait()
        merged = _join(inputs, out, env.world) if env.is_main else None
        group.wait()
    return merged


def _part(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f"{out.name}.part-{rank}-of-{world}.npz")


def _save_part(preds: Predictions, path: Path) -> None:
    arrays = {
        "paths": np.asarray(preds.paths, dtype=str),
        "probs": np.asarray(preds.probs, dtype=np.float32),
        "skipped": np.asarray(preds.skipped, dtype=str).reshape(-1, 2),
        "class_names": np.asarray(preds.class_names, dtype=str),
        "meta": np.asarray([preds.precision, str(preds.views)], dtype=str),
    }
    if preds.ood is not None:
        arrays["ood"] = np.asarray(preds.ood, dtype=bool)
    try:
        atomic_write(path, lambda fh: np.savez(fh, **arrays), point="predict-part")
    except OSError as err:
        raise FastallError(f"{path}: cannot write this rank's predictions ({err.strerror or err})") from err


def _join(inputs: Sequence[str | Path], out: Path, world: int) -> Predictions:
    """Every rank's part, rows and skipped files in input order; the parts are removed."""
    order = {str(p): i for i, p in enumerate(find_images(inputs)[0])}
    paths: list[str] = []
    probs, skipped, ood = [], [], []
    for rank in range(world):
        part = _part(out, rank, world)
        try:
            with np.load(part, allow_pickle=False) as z:
                paths += z["paths"].tolist()
                probs.append(z["probs"])
                ood += [z["ood"]] if "ood" in z.files else []
                skipped += [tuple(row) for row in z["skipped"].tolist()]
                class_names, (precision, views) = z["class_names"].tolist(), z["meta"].tolist()
        except (OSError, ValueError, KeyError) as err:
            raise FastallError(f"{part}: cannot read rank {rank}'s predictions ({err})") from err
    rows = sorted(range(len(paths)), key=lambda k: order.get(paths[k], -1))
    skipped.sort(key=lambda item: order.get(item[0], -1))
    if not rows:
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise FastallError(f"none of the {len(order)} image files could be read{first}")
    for rank in range(world):
        with contextlib.suppress(OSError):
            _part(out, rank, world).unlink()
    return Predictions(
        [paths[k] for k in rows],
        np.concatenate(probs)[rows],
        class_names,
        skipped,
        precision,
        int(views),
        np.concatenate(ood)[rows] if len(ood) == world else None,
    )
