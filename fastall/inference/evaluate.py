"""`fastall evaluate`: external validation of a run on a labelled dataset it never saw.

The end-to-end model (backbone + head) classifies every readable image of DATA (either layout); the run's
metrics are reported with patient-bootstrap CIs, at 0.5 and at a threshold chosen on the run's own
out-of-fold predictions; cells are aggregated to patients; DATA's view-0 features are compared with the run's
training cache (domain shift), and DATA files with the same bytes as training images are counted.
Outputs (written atomically to OUT): evaluation.json, predictions.csv, patients.csv, skipped.csv (if any) and
report/index.html.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from fastall.data.discover import Record, discover
from fastall.data.loader import default_workers, iter_batches
from fastall.data.positive import is_disease_name, resolve_positive
from fastall.errors import FastallError
from fastall.features.cache import read_cache
from fastall.inference.artifacts import check_run_cache, head_file, load_run, read_head
from fastall.inference.model import LeukemiaClassifier
from fastall.inference.ood import training_view0
from fastall.inference.shift import Radius, domain_shift, same_files
from fastall.inference.threshold import choose_threshold
from fastall.reporting.provenance import command_line
from fastall.system import csvsafe
from fastall.system.events import Reporter, silent
from fastall.system.jsonable import plain
from fastall.system.runfolder import atomic_folder, check_target
from fastall.training.metrics import clinical_metrics
from fastall.training.patients import patient_level
from fastall.training.uncertainty import metrics_with_ci

EVAL_FORMAT, EVAL_VERSION = "fastall-evaluation", 1


@dataclass
class Evaluation:
    out: Path
    result: dict
    warnings: list[str] = field(default_factory=list)
    report: Path | None = None


def parse_classes(spec: str | None) -> dict[str, str]:
    """``blast=all,normal=hem`` -> ``{"blast": "all", "normal": "hem"}``."""
    mapping = {}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise FastallError(f"--classes {spec!r}: expected DATA=RUN pairs, e.g. blast=all,normal=hem")
        if name.strip() in mapping:
            raise FastallError(f"--classes {spec!r}: DATA class {name.strip()!r} is mapped twice")
        mapping[name.strip()] = target.strip()
    return mapping


def map_labels(records: list[Record], run_classes: list[str], mapping: dict[str, str]) -> np.ndarray:
    """Each record's label index in the run's classes. Names match exactly (``A`` and ``a`` are two classes,
    as in scan and train-head); a DATA class the run lacks, or a mapping from or to a class that does not
    exist, is refused."""
    index_of = {c: i for i, c in enumerate(run_classes)}
    known = ", ".join(run_classes)
    present = sorted({r.class_name for r in records})
    for name, target in mapping.items():
        if target not in index_of:
            raise FastallError(f"--classes maps to {target!r}, not a class of the run (its classes: {known})")
        if name not in present:
            raise FastallError(
                f"--classes maps {name!r}, not a class of DATA (its classes: {', '.join(present)})"
            )
    index = {}
    for name in present:
        target = mapping.get(name, name)
        if target not in index_of:
            raise FastallError(
                f"DATA class {name!r} is not a class of the run (its classes: {known}): "
                f"map it with --classes {name}=<run class>"
            )
        index[name] = index_of[target]
    return np.array([index[r.class_name] for r in records], dtype=np.int64)


def run_positive(record: dict, requested: str | None = None) -> str | None:
    """The run's positive class: recorded in head.pt; a binary run made before fastall recorded it scored
    its second class. ``requested`` (``--positive``) must agree with a recorded one, or names it for an old
    run."""
    names = list(record["class_names"])
    recorded = (
        record.get("positive_class")
        if "positive_class" in record
        else (names[1] if len(names) == 2 else None)
    )
    if requested is None:
        return recorded
    if "positive_class" in record and recorded is not None and requested != recorded:
        raise FastallError(
            f"--positive {requested!r} disagrees with the run, whose positive class is {recorded!r}: "
            "the run's metrics and thresholds are of that class"
        )
    return resolve_positive(names, requested).name


def check_positive_mapping(
    data_classes: list[str], mapping: dict[str, str], run_names: list[str], positive: str | None
) -> None:
    """Refuse a --classes mapping that puts DATA's disease class onto the run's other class (or a DATA class
    named like the run's positive class onto another one): it would swap sensitivity and specificity."""
    if positive is None or len(run_names) != 2:
        return
    negative = next(c for c in run_names if c != positive)
    for name in data_classes:
        target = mapping.get(name, name)
        if target != negative:
            continue
        if is_disease_name(name) or name.lower() == positive.lower():
            raise FastallError(
                f"--classes maps DATA class {name!r} onto the run's {negative!r}, but {name!r} names the "
                f"disease and the run's positive class is {positive!r}: that would swap sensitivity and "
                f"specificity; map it with --classes {name}={positive}"
            )


def threshold_metrics(y: np.ndarray, prob: np.ndarray, t: float, positive: int) -> dict:
    """Cell metrics when the positive class (index ``positive``) is called at ``P(positive) >= t``."""
    called = prob[:, positive] >= t
    pred = np.where(called, positive, 1 - positive).astype(np.int64)
    kw = {"zero_division": 0, "pos_label": positive}
    return {
        "threshold": float(t),
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, labels=[0, 1], **kw)),
        "recall": float(recall_score(y, pred, labels=[0, 1], **kw)),
        "f1": float(f1_score(y, pred, labels=[0, 1], **kw)),
        **clinical_metrics(y, pred, prob, [0, 1], positive),
    }


def run_model(
    model: LeukemiaClassifier,
    paths: list[Path],
    batch_size: int,
    reporter: Reporter | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """``(kept indices, probabilities [N, K], view-0 features [N, D], skipped (path, reason))``; each file
    skipped is a ``skipped`` warning of ``reporter``."""
    reporter = reporter or silent()
    kept, probs, feats, skipped = [], [], [], []
    workers = default_workers(model.device)
    with torch.inference_mode():
        for batch in iter_batches(paths, model.image_size, batch_size, workers=workers):
            for i, message in batch.bad:
                skipped.append((str(paths[i]), message.split(": ", 1)[-1]))
                reporter.warn("skipped", message)
            if batch.indices:
                f = model.forward_features(batch.images)
                probs.append(torch.softmax(model.forward_head(f).double(), dim=1).cpu().numpy())
                feats.append(f.float().cpu().numpy())
                kept.extend(batch.indices)
    if not kept:
        raise FastallError(f"none of the {len(paths)} images could be read (first: {skipped[0][0]})")
    return np.array(kept), np.concatenate(probs), np.concatenate(feats), skipped


def _training_cache(record: dict, cache: str | Path | None, notes: list[str], head: Path):
    """The run's training cache (``--cache`` or the recorded one), checked against the run before any work:
    another dataset's or backbone's cache given as ``--cache`` is refused; a recorded one that no longer
    matches is noted and not used."""
    path = Path(str(cache or record.get("cache_path") or ""))
    if not path.is_file():
        if cache:
            raise FastallError(f"--cache {cache}: no such cache file")
        notes.append(f"the run's training cache {path} is not here (pass --cache PATH): shift not measured")
        return None
    try:
        return check_run_cache(record, read_cache(path), head)
    except FastallError as err:
        if cache:
            raise
        notes.append(f"{err}: shift not measured (pass the run's cache with --cache PATH)")
        return None


@dataclass(frozen=True)
class EvaluateOptions:
    """How :func:`evaluate_run` reads DATA and what it writes (the `fastall evaluate` options).

    ``classes``: DATA's class names mapped to the run's (``blast=all,normal=hem``); ``threshold``: a number,
    ``youden`` or ``sens=0.95``; ``positive``: the run's positive class, for a run made before fastall
    recorded it (it must agree with a recorded one); ``cache``: the run's training cache where it moved."""

    classes: str | None = None
    patient_regex: str | None = None
    threshold: str = "0.5"
    device: str = "auto"
    batch_size: int = 32
    weights_path: str | Path | None = None
    cache: str | Path | None = None
    overwrite: bool = False
    report: bool = True
    positive: str | None = None
    patients: str | Path | None = None


def evaluate_run(
    run: str | Path,
    data: str | Path,
    out: str | Path,
    options: EvaluateOptions | None = None,
    *,
    reporter: Reporter | None = None,
    **settings: Any,
) -> Evaluation:
    """Evaluate RUN on DATA and write OUT (see the module doc). ``options``: :class:`EvaluateOptions`;
    ``settings``: fields of it by name, on top (``evaluate_run(run, data, out, report=False)``)."""
    o = replace(options or EvaluateOptions(), **settings)
    out = Path(out)
    check_target(out.absolute(), o.overwrite, EVAL_FORMAT)
    record = read_head(head_file(run))
    names = list(record["class_names"])
    pos_name = run_positive(record, o.positive)
    pos = names.index(pos_name) if pos_name is not None else None
    ds = discover(data, patient_regex=o.patient_regex, patients=o.patients)
    ds.check(training=False)
    records = ds.labelled()
    if not records:
        raise FastallError(f"{data}: no labelled images: evaluation needs class folders (or the C-NMC tree)")
    mapping = parse_classes(o.classes)
    check_positive_mapping(sorted({r.class_name for r in records}), mapping, names, pos_name)
    labels = map_labels(records, names, mapping)
    chosen = choose_threshold(o.threshold, run, names, pos_name)
    notes = [f"{p}" for p in ds.problems] + list(ds.warnings)
    if len(ds.unlabelled()):
        notes.append(f"{len(ds.unlabelled())} unlabelled image(s) in DATA ignored")
    train = _training_cache(record, o.cache, notes, head_file(run))
    model = load_run(run, weights_path=o.weights_path, device=o.device)
    kept, prob, feats, skipped = run_model(model, [r.path for r in records], o.batch_size, reporter)
    records = [records[i] for i in kept]
    y, patients = labels[kept], np.array([r.patient for r in records])
    k = len(names)
    metrics = metrics_with_ci(y, prob, patients, k, positive=pos)
    present = sorted({int(v) for v in y})
    if len(present) < 2:
        notes.append(
            f"DATA holds one class only ({names[present[0]]}): AUC is undefined; see the per-class rate"
        )
    per_class = {names[c]: float(np.mean(prob[y == c].argmax(1) == c)) for c in present}
    result: dict = {
        "format": EVAL_FORMAT,
        "format_version": EVAL_VERSION,
        "command": command_line(),
        "run": str(Path(run).absolute()),
        "data": {key: v for key, v in ds.summary().items() if key not in ("problems", "per_source")},
        "class_names": names,
        "positive_class": pos_name,
        "images": int(len(records)),
        "skipped": len(skipped),
        "metrics": metrics,
        "per_class_recall": per_class,
        "threshold": chosen,
        "notes": notes,
    }
    if pos is not None:
        score = prob[:, pos]
        result["at_threshold"] = threshold_metrics(y, prob, chosen["value"], pos)
        truth = (y == pos).astype(np.int64)
        result["patient_level"], patient_rows = patient_level(truth, score, patients, chosen["value"])
        result["patient_level"]["positive_class"] = pos_name
    else:
        patient_rows = []
        why = "two classes" if k != 2 else "a positive class (--positive)"
        notes.append(f"patient-level diagnosis needs {why}: not made")
    warnings, ood = [], None
    view0 = training_view0(record, run, train.features) if train is not None else None
    if train is not None and train.n_images >= 4 and view0 is not None:
        radius = Radius(view0, train.patients)
        result["shift"] = domain_shift(view0, feats, radius=radius)
        ood = radius.outside(feats)
        result["ood"] = {"images": int(ood.size), "outside": int(ood.sum()), "expected_fraction": 0.01}
        if result["shift"]["large"]:
            warnings.append("large domain shift: " + "; ".join(result["shift"]["reasons"]))
        copies = same_files([r.path for r in records], train.attrs.get("data_root"), list(train.paths))
    else:
        copies = {"checked": False, "note": "no training cache: copies of training images not checked"}
    result["training_copies"] = copies
    if copies.get("copies"):
        warnings.append(
            f"{copies['copies']} DATA image(s) have the same file contents as the run's training images: "
            "not an external test for those"
        )
    elif not copies["checked"]:
        notes.append(copies["note"])
    result["warnings"] = warnings
    made = None
    with atomic_folder(out, overwrite=o.overwrite) as tmp:
        _write_predictions(tmp / "predictions.csv", records, names, y, prob, pos, chosen["value"], ood)
        _write_rows(tmp / "patients.csv", patient_rows)
        if skipped:
            _write_rows(tmp / "skipped.csv", [{"path": p, "reason": r} for p, r in skipped])
        (tmp / "evaluation.json").write_text(json.dumps(plain(result), indent=2, allow_nan=False) + "\n")
        if o.report:
            from fastall.inference.evaluate_report import write_evaluation_report

            made = write_evaluation_report(tmp, result, y, prob, names, shown_as=out.absolute(), run=run)
    return Evaluation(out.absolute(), result, warnings, made)


def _write_predictions(path, records, names, y, prob, positive: int | None, t: float, ood=None) -> None:
    """``path, patient, true_class, predicted_class, p_<class>...`` (the class called at the threshold;
    probabilities in float64 from the logits, written whole, so that a recomputation ties nothing) and
    ``ood`` where the training features were at hand."""
    called = prob.argmax(1)
    if positive is not None:
        called = np.where(prob[:, positive] >= t, positive, 1 - positive)
    rows = [
        {
            "path": str(r.path),
            "patient": r.patient,
            "true_class": names[int(y[i])],
            "predicted_class": names[int(called[i])],
            **{f"p_{c}": f"{prob[i, j]:.17g}" for j, c in enumerate(names)},
            **({} if ood is None else {"ood": int(ood[i])}),
        }
        for i, r in enumerate(records)
    ]
    _write_rows(path, rows)


def _write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        if rows:
            writer = csvsafe.dict_writer(fh, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
