"""`fastall verify`: the end-to-end model on real pixels must give the cached path's answers.

Both classes are sampled; each image is decoded from its original file, run through the end-to-end model, and
compared with the head applied to the cached features of the same image (view 0, then one augmented view
rebuilt from its stored ``view_params``); for a finetune run the cached path is the stored maps through the
fine-tuned stage and pool. With a float16 cache or an AMP extraction the half-precision rule
applies (100% class agreement, |Δprob| ≤ 1e-2); fp32 on both sides must agree to |Δprob| ≤ 1e-4. A faster
precision is also checked against fp32 (≥ 99.5% agreement).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from fastall.features.cache import FeatureCache
from fastall.features.maps import open_maps
from fastall.inference.artifacts import RunFolder, build_head, model_from_run, open_run
from fastall.inference.model import LeukemiaClassifier
from fastall.inference.precision import MIN_PRECISION_AGREEMENT, calibration_pick, pick_images, try_precision
from fastall.system import csvsafe
from fastall.system.devices import decide_precision

FP32_TOL, HALF_TOL = 1e-4, 1e-2
PREDICT_DEFAULT = "fp32"  # predict's precision for a run (cli/inference.py)
RECORDED_TOL = {"fp32": 1e-2, "bf16": 3e-2}


@dataclass
class Check:
    name: str
    images: int
    max_dlogit: float | None
    max_dprob: float
    agreement: float
    tol_prob: float | None
    min_agreement: float | None
    passed: bool


@dataclass
class VerifyReport:
    run: str
    cache: str
    data_root: str
    device: str
    rule: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def compare(
    name: str,
    logits_a: torch.Tensor,
    logits_b: torch.Tensor,
    tol_prob: float | None,
    min_agreement: float | None,
) -> Check:
    a, b = logits_a.double().cpu(), logits_b.double().cpu()
    dlogit = (a - b).abs().max().item() if len(a) else 0.0
    return _check(name, torch.softmax(a, 1), torch.softmax(b, 1), dlogit, tol_prob, min_agreement)


def _check(
    name: str,
    prob_a: torch.Tensor,
    prob_b: torch.Tensor,
    dlogit: float | None,
    tol_prob: float | None,
    min_agreement: float | None,
) -> Check:
    dprob = (prob_a - prob_b).abs().max().item() if len(prob_a) else 0.0
    agree = (prob_a.argmax(1) == prob_b.argmax(1)).double().mean().item() if len(prob_a) else 0.0
    passed = (
        len(prob_a) > 0
        and (min_agreement is None or agree >= min_agreement)
        and (tol_prob is None or dprob <= tol_prob)
    )
    return Check(name, len(prob_a), dlogit, dprob, agree, tol_prob, min_agreement, bool(passed))


def extraction_precision(fc: FeatureCache, device: torch.device) -> str | None:
    """The autocast dtype the cache's features were computed with, where ``device`` is of the same type."""
    amp_dtype = str(fc.key_params.get("amp_dtype", ""))
    same_device = str(fc.attrs.get("device", "")).split(":")[0] == torch.device(device).type
    return amp_dtype if fc.key_params.get("amp") and amp_dtype in ("bf16", "fp16") and same_device else None


def verify_run(
    run: str | Path,
    *,
    images: int = 16,
    device: str = "auto",
    cache: str | Path | None = None,
    data: str | Path | None = None,
    weights_path: str | Path | None = None,
    precision: str = "fp32",
    batch_size: int = 16,
) -> VerifyReport:
    folder = open_run(run, cache=cache)
    fc = folder.cache("verify", hint=": pass --cache PATH")
    model = model_from_run(folder, weights_path=weights_path, device=device)
    precision = decide_precision(precision, model.device, allowed=("fp32", "bf16", "fp16", "int8")).precision
    root = folder.data_root(data)
    chosen = pick_images(fc.labels, images)
    with h5py.File(fc.path, "r") as f:
        feats = f["features"]
        half = feats.dtype == np.float16 or bool(fc.key_params.get("amp", False))
        cached = torch.from_numpy(feats[np.sort(chosen)].astype(np.float32))
    order = np.argsort(np.argsort(chosen))
    cached = cached[torch.from_numpy(order)]
    if folder.record.get("finetune"):  # the cached path of a finetune run: maps -> stage -> pool
        cached = stage_features(model, fc, chosen)
    tol, rule = (
        (HALF_TOL, "half precision: 100% agreement, |Δprob| ≤ 1e-2")
        if half
        else (FP32_TOL, "fp32: 100% agreement, |Δprob| ≤ 1e-4")
    )
    report = VerifyReport(str(run), str(fc.path), str(root), str(device), rule)
    pixels = folder.images(chosen, data=data, needed_for="verify", batch_size=batch_size)
    matched = extraction_precision(fc, model.device)
    as_cached = model
    if matched:
        as_cached = model.optimize(matched, backend="eager")
        report.notes.append(
            f"end-to-end backbone run at the extraction's precision ({matched} autocast on "
            f"{model.device.type}), as the cache was made"
        )
    with torch.inference_mode():
        feats = _features(as_cached, pixels, None, batch_size)
        e2e = model.forward_head(feats).cpu()
        report.checks.append(compare("view 0", e2e, model.forward_head(cached[:, 0]), tol, 1.0))
        recorded = recorded_check(folder, fc, chosen, feats)
        if recorded is None:
            report.notes.append("no predictions.csv rows for these images: recorded predictions not checked")
        else:
            report.checks.append(recorded)
        if cached.shape[1] > 1:
            params = torch.from_numpy(fc.view_params[chosen, 1])
            aug = model.forward_head(_features(as_cached, pixels, params, batch_size)).cpu()
            report.checks.append(compare("view 1 augmented", aug, model.forward_head(cached[:, 1]), tol, 1.0))
        else:
            report.notes.append("the cache holds one view: no augmented view to reproduce")
    if matched:
        with torch.inference_mode():
            e2e = model.forward_head(_features(model, pixels, None, batch_size)).cpu()
        report.checks.append(
            compare(
                "view 0, fp32 as predict runs it",
                e2e,
                model.forward_head(cached[:, 0]),
                None,
                MIN_PRECISION_AGREEMENT,
            )
        )
    report.notes.append(
        f"predict runs this model at {PREDICT_DEFAULT} by default (its --precision): view 0 is checked at "
        f"{PREDICT_DEFAULT}" + (f" as well as at the extraction's {matched}" if matched else "")
    )
    if precision != "fp32":
        report.checks.append(_precision_check(model, folder, chosen, pixels, e2e, precision, data))
    return report


def stage_features(model: LeukemiaClassifier, fc: FeatureCache, chosen: np.ndarray) -> torch.Tensor:
    """``[n, V, D]``: the stored maps of views 0 and 1 through the run's fine-tuned stage and pool."""
    store = open_maps(fc.path)
    out = []
    with torch.inference_mode():
        for v in range(min(2, store.map_views)):
            maps = torch.from_numpy(store.read(chosen, [v] * len(chosen)))
            out.append(model.backbone.pooled(maps.to(model.device)).float().cpu())
    return torch.stack(out, 1)


def _precision_check(
    model: LeukemiaClassifier,
    folder: RunFolder,
    chosen: np.ndarray,
    pixels: torch.Tensor,
    reference: torch.Tensor,
    precision: str,
    data: str | Path | None,
) -> Check:
    """``precision`` against eager fp32 on the verified images, by the one agreement rule."""
    calibration = None
    if precision == "int8":
        pick = calibration_pick(folder.cache("verify").labels, chosen)
        calibration = folder.images(pick, data=data, needed_for="int8 calibration")
    _, trial = try_precision(model, pixels, precision, calibration=calibration, reference=reference)
    return Check(
        f"{precision} vs fp32",
        trial.images,
        trial.max_dlogit,
        trial.max_dprob,
        trial.agreement,
        None,
        MIN_PRECISION_AGREEMENT,
        trial.agrees,
    )


def recorded_check(
    folder: RunFolder, fc: FeatureCache, chosen: np.ndarray, feats: torch.Tensor
) -> Check | None:
    """End-to-end features through the run's own fold and final heads vs its predictions.csv.

    This catches a head file swapped in from another run, which the cached-path check cannot see.
    """
    record, where = folder.record, folder.head_path
    path = folder.head_path.parent / "predictions.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as fh:
        rows = {row.get("path"): row for row in csvsafe.dict_reader(fh)}
    heads = {"test": build_head(record["head_config"], record["state_dict"], where)}
    for fold, state in enumerate(record.get("fold_state_dicts") or []):
        heads[str(fold)] = build_head(record["head_config"], state, where)
    names = [str(c) for c in record["class_names"]]
    mine, theirs = [], []
    for k, i in enumerate(chosen):
        row = rows.get(str(fc.paths[i]))
        columns = [f"p_{c}" for c in names] if row and f"p_{names[0]}" in row else None
        if row is None or not (row.get(columns[0]) if columns else row.get("probability")):
            continue
        head = heads.get("test" if row.get("split") == "test" else str(row.get("fold")))
        if head is None:
            continue
        prob = torch.softmax(head(feats[k : k + 1].to(next(head.parameters()).device)).double().cpu(), 1)[0]
        if columns:
            mine.append(prob)
            theirs.append(torch.tensor([float(row[c]) for c in columns], dtype=torch.float64))
            continue
        score = prob[1] if len(prob) == 2 else prob.max()  # runs before the p_<class> columns
        mine.append(torch.stack([1 - score, score]))
        recorded = float(row["probability"])
        theirs.append(torch.tensor([1 - recorded, recorded], dtype=torch.float64))
    if not mine:
        return None
    precision = str((record.get("train_config") or {}).get("precision", "fp32"))
    return _check(
        "recorded probs",
        torch.stack(mine),
        torch.stack(theirs),
        None,
        RECORDED_TOL.get(precision, RECORDED_TOL["bf16"]),
        None,
    )


def _features(
    model: LeukemiaClassifier, pixels: torch.Tensor, params: torch.Tensor | None, batch_size: int
) -> torch.Tensor:
    out = []
    for start in range(0, len(pixels), batch_size):
        p = None if params is None else params[start : start + batch_size]
        out.append(model.forward_features(pixels[start : start + batch_size], p).float())
    return torch.cat(out)


def render(report: VerifyReport):
    """A rich table of the checks."""
    from rich.table import Table

    table = Table(title=f"verify {report.run}", caption=f"max |Δ| over the images; {report.rule}")
    for col in ("check", "n", "Δlogit", "Δprob", "agree", "needs", "ok"):
        table.add_column(col, justify="left" if col == "check" else "right", no_wrap=True)
    for c in report.checks:
        needs = " ".join(
            ([f"{c.min_agreement:.1%}"] if c.min_agreement is not None else [])
            + ([f"Δp≤{c.tol_prob:g}"] if c.tol_prob is not None else [])
        )
        dlogit = "-" if c.max_dlogit is None else f"{c.max_dlogit:.2g}"
        table.add_row(
            c.name,
            str(c.images),
            dlogit,
            f"{c.max_dprob:.2g}",
            f"{c.agreement:.1%}",
            needs,
            "[green]pass[/]" if c.passed else "[red]FAIL[/]",
        )
    return table
