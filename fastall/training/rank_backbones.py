"""`fastall compare`: which frozen backbone's features are best for these cells, on the same patients.

The caches must hold one dataset (the same images, labels and patients, in the same order). Every backbone
then gets the same patient-level folds and test set (:func:`fastall.training.splits.make_splits` on the shared
labels, patients and seed; each run's folds.csv is checked against them) and the same head configuration, or
the best of its own small sweep. Backbones are ranked by the pooled out-of-fold AUC, with a patient-bootstrap
interval; each is compared with the best on the same bootstrap draws of patients (a paired bootstrap), and
set beside its baseline, a standardised logistic probe on the same cache and folds.
Costs come from what each cache recorded (extract time per image, parameters); end-to-end latency needs the
backbone and is added by :mod:`fastall.inference.costs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fastall.errors import FastallError
from fastall.features.cache import FeatureCache, read_cache
from fastall.reporting.backbone_table import write_outputs
from fastall.system import csvsafe
from fastall.system.events import Reporter, silent
from fastall.system.names import safe_token
from fastall.system.runfolder import atomic_folder, check_target
from fastall.training.bootstrap import paired_auc_difference, patient_codes
from fastall.training.config import HeadConfig, TrainOptions
from fastall.training.probe import probe_cache
from fastall.training.protocols.columns import field_columns
from fastall.training.splits import Splits, fold_table, make_splits
from fastall.training.uncertainty import LEVEL, RESAMPLES

COMPARE_FORMAT, COMPARE_VERSION = "fastall-compare", 1
METRICS = ("auc", "accuracy", "f1", "precision", "recall")
DIFF_METRICS = ("auc", "accuracy", "f1")


@dataclass
class CompareOptions:
    """How every backbone's head is run (train-head's options, shared), the optional sweep grid, and the
    bootstrap (``resamples``, ``level``: those of :mod:`fastall.training.uncertainty`, so that the paired
    resamples are the ones behind each run's own intervals)."""

    run: TrainOptions = field(default_factory=TrainOptions)
    sweep: str | None = None
    resamples: int = RESAMPLES
    level: float = LEVEL

    def for_runs(self) -> TrainOptions:
        """train-head's options for one backbone: quiet, no per-run HTML report."""
        return replace(self.run, overwrite=False, progress=False, report=False)


@dataclass
class Comparison:
    """The compare folder and the content of its compare.json."""

    out: Path
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def backbones(self) -> list[dict[str, Any]]:
        return self.results["backbones"]


def run_train_head(cache: Path, out: Path, config: HeadConfig, options: CompareOptions) -> Any:
    """The one call into train-head (one head configuration, the shared run options)."""
    from fastall.training.train_head import train_head

    return train_head(cache, out, config, options.for_runs())


def _best_of_sweep(cache: Path, out: Path, options: CompareOptions) -> HeadConfig:
    from fastall.training.sweep import sweep

    result = sweep(cache, out, grid=options.sweep, metric="auc", options=options.for_runs())
    return HeadConfig(**result.best["params"])


def check_same_dataset(caches: Sequence[FeatureCache]) -> None:
    """Refuse caches of different datasets, naming the first difference found."""
    ref = caches[0]
    for other in caches[1:]:
        where = f"{other.path} and {ref.path} are not the same dataset"
        if list(other.class_names) != list(ref.class_names):
            raise FastallError(f"{where}: classes {other.class_names} vs {ref.class_names}")
        mine, theirs = other.paths.astype(str), ref.paths.astype(str)
        if len(mine) != len(theirs) or not np.array_equal(mine, theirs):
            only_other = sorted(set(mine) - set(theirs))
            only_ref = sorted(set(theirs) - set(mine))
            if not only_other and not only_ref:
                raise FastallError(f"{where}: the same images in another order (re-extract one of them)")
            first = [f"{p} only in {other.path.name}" for p in only_other[:1]]
            first += [f"{p} only in {ref.path.name}" for p in only_ref[:1]]
            raise FastallError(
                f"{where}: {len(other.paths)} vs {len(ref.paths)} images, {len(only_other)} only in "
                f"{other.path.name}, {len(only_ref)} only in {ref.path.name} (e.g. {'; '.join(first)})"
            )
        for what, a, b in (
            ("labels", other.labels, ref.labels),
            ("patients", other.patients.astype(str), ref.patients.astype(str)),
        ):
            differ = np.flatnonzero(a != b)
            if differ.size:
                i = int(differ[0])
                raise FastallError(
                    f"{where}: {what} differ for {differ.size} images (e.g. {mine[i]}: {a[i]} vs {b[i]})"
                )
        for key in ("dataset_fingerprint", "content_fingerprint"):
            fp, fp_ref = other.key_params.get(key), ref.key_params.get(key)
            if fp and fp_ref and fp != fp_ref:
                change = _first_change(other, ref)
                raise FastallError(
                    f"{where}: same names, labels and patients but the image files differ "
                    f"({key.replace('_', ' ')} {str(fp)[:12]}... vs {str(fp_ref)[:12]}...{change})"
                )


def _first_change(other: FeatureCache, ref: FeatureCache) -> str:
    """``; e.g. PATH`` naming the first image whose content hash differs, where both caches hold them."""
    if other.content_hashes is None or ref.content_hashes is None:
        return ""
    differ = np.flatnonzero(other.content_hashes.astype(str) != ref.content_hashes.astype(str))
    return f"; {differ.size} image(s) differ, e.g. {ref.paths[differ[0]]}" if differ.size else ""


def _names(caches: Sequence[FeatureCache]) -> list[str]:
    """One name per cache: its encoder (``resnet50[layer3]``), with the file's stem where two share one. A
    name is read from the file: it is shown, and becomes a folder only through ``safe_token``."""
    names = [c.encoder for c in caches]
    out = [n if names.count(n) == 1 else f"{n}-{c.path.stem}" for n, c in zip(names, caches, strict=True)]
    if len({safe_token(n) for n in out}) != len(out):
        raise FastallError("the same cache is given twice: compare different caches")
    return out


def _folds_of(run: Path) -> dict[str, str]:
    with open(run / "folds.csv", newline="") as fh:
        return {row["patient"]: str(row["fold"]) for row in csvsafe.dict_reader(fh)}


def _oof_scores(run: Path, cache: FeatureCache) -> np.ndarray:
    """Each pool image's out-of-fold P(class 1), in cache row order (NaN for rows with none): the binary AUC
    is the same for either class, so the paired AUC difference does not depend on which is positive."""
    row_of = {p: i for i, p in enumerate(cache.paths.astype(str))}
    scores = np.full(cache.n_images, np.nan)
    column = f"p_{cache.class_names[-1]}"
    with open(run / "predictions.csv", newline="") as fh:
        for row in csvsafe.dict_reader(fh):
            if row["split"] == "val":
                scores[row_of[row["path"]]] = float(row.get(column) or row.get("probability") or "nan")
    return scores


def _entry(name: str, cache: FeatureCache, run: Path, metrics: dict, config: HeadConfig) -> dict[str, Any]:
    kp, attrs = cache.key_params, cache.attrs
    summary = metrics["summary"]
    seconds = attrs.get("extract_s_per_image")
    return {
        "name": name,
        "cache": str(cache.path.absolute()),
        "backbone": cache.backbone,
        "weights": kp.get("weights"),
        "image_size": kp.get("image_size"),
        "views": cache.n_views,
        "dim": cache.dim,
        "run": str(run),
        "config": asdict(config),
        "summary": {k: summary.get(k) for m in METRICS for k in (m, f"{m}_std")},
        "folds": [{m: f.get(m) for m in ("fold", *METRICS)} for f in metrics["folds"]],
        "test": (metrics.get("test") or {}).get("final"),
        "oof": _pooled_auc(metrics.get("pooled") or {}),
        "cost": {
            "extract_ms_per_image": None if seconds is None else 1e3 * float(seconds),
            "extract_device": attrs.get("device_name") or attrs.get("device"),
            "params": attrs.get("backbone_params") or None,
            "latency_ms": None,
            "latency_device": None,
        },
    }


def _pooled_auc(pooled: dict[str, Any]) -> dict[str, Any] | None:
    """The run's pooled out-of-fold AUC and the patient-bootstrap interval train-head recorded for it."""
    if pooled.get("auc") is None:
        return None
    ci = pooled.get("ci") or {}
    low, high = ((ci.get("intervals") or {}).get("auc")) or (None, None)
    return {"auc": pooled["auc"], "low": low, "high": high, "note": ci.get("note")}


def compare_caches(
    caches: Sequence[str | Path],
    out: str | Path,
    *,
    config: HeadConfig | None = None,
    options: CompareOptions | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> Comparison:
    """Train every cache's head on the same folds, rank the backbones and compare each with the best.

    Writes OUT/compare.json, OUT/compare.csv and a run folder per backbone (OUT/runs/NAME); says which
    backbone it trains through ``reporter`` (silent by default)."""
    reporter = reporter or silent()
    config = (config or HeadConfig()).check()
    options = options or CompareOptions()
    if len(caches) < 2:
        raise FastallError("compare needs at least two caches")
    check_target(Path(out).absolute(), overwrite, COMPARE_FORMAT)
    loaded = [read_cache(c, load_features=False) for c in caches]
    if len({c.path.resolve() for c in loaded}) < len(loaded):
        raise FastallError("the same cache is given twice: compare different caches")
    check_same_dataset(loaded)
    names = _names(loaded)
    ref = loaded[0]
    splits = make_splits(
        ref.labels,
        ref.patients,
        ref.sources,
        folds=options.run.folds,
        test=options.run.test,
        holdout=options.run.holdout,
        seed=options.run.seed,
        class_names=ref.class_names,
    )
    expected = {
        r["patient"]: str(r["fold"]) for r in fold_table(splits, ref.labels, ref.patients, ref.class_names)
    }
    entries, scores = [], []
    with atomic_folder(out, overwrite=overwrite) as tmp:
        try:
            for name, cache in zip(names, loaded, strict=True):
                folder = safe_token(name)  # a hostile ``/tmp/x`` or ``../y`` must not lead outside --out
                reporter.info(f"{name}: training heads on {cache.path}", code="backbone")
                cfg = config
                if options.sweep:
                    cfg = _best_of_sweep(cache.path, tmp / "sweeps" / folder, options)
                result = run_train_head(cache.path, tmp / "runs" / folder, cfg, options)
                if _folds_of(tmp / "runs" / folder) != expected:
                    raise FastallError(f"{name}: train-head made other folds than the comparison's (a bug)")
                entries.append(_entry(name, cache, Path("runs") / folder, result.metrics, cfg))
                positive = ((result.metrics.get("classes") or {}).get("positive") or {}).get("index")
                full = read_cache(cache.path)
                probe = probe_cache(full, splits, positive=positive)
                oof_auc = probe.pooled.get("auc")
                entries[-1]["probe"] = {"oof_auc": oof_auc, **probe.summary, "test": probe.test}
                entries[-1]["verdict"] = result.metrics.get("verdict")
                entries[-1]["protocols"] = field_columns(full, splits, seed=options.run.seed)
                scores.append(_oof_scores(tmp / "runs" / folder, cache))
            results = _rank(entries, scores, ref, splits, options)
            results["config"] = asdict(config)
            write_outputs(tmp, results)
        except FastallError as err:  # name OUT, never the temporary folder it is built in
            raise FastallError(str(err).replace(str(tmp), str(Path(out).absolute()))) from err
    return Comparison(Path(out).absolute(), results)


def _rank(
    entries: list[dict], scores: list[np.ndarray], ref: FeatureCache, splits: Splits, options: CompareOptions
) -> dict[str, Any]:
    rows = np.flatnonzero(np.isfinite(np.vstack(scores)).all(0))
    labels, patients = ref.labels[rows], ref.patients[rows]
    boot = {"resamples": options.resamples, "seed": options.run.seed, "level": options.level}
    two_classes = len(ref.class_names) == 2

    def score(i: int) -> float:
        value = (entries[i]["oof"] or {}).get("auc", entries[i]["summary"]["auc"])
        return value if value is not None and np.isfinite(value) else -np.inf

    order = sorted(range(len(entries)), key=lambda i: -score(i))
    best = order[0]
    for rank, i in enumerate(order, 1):
        entry = entries[i]
        entry["rank"] = rank
        entry["vs_best"] = None
        if i == best:
            continue
        diff = {
            "best": entries[best]["name"],
            "fold_differences": {
                m: [
                    None if a[m] is None or b[m] is None else a[m] - b[m]
                    for a, b in zip(entry["folds"], entries[best]["folds"], strict=True)
                ]
                for m in DIFF_METRICS
            },
        }
        if two_classes:
            diff["auc"] = paired_auc_difference(labels, scores[i][rows], scores[best][rows], patients, **boot)
        diff["statement"] = statement(entry["name"], diff, options.level)
        entry["vs_best"] = diff
    return {
        "format": COMPARE_FORMAT,
        "format_version": COMPARE_VERSION,
        "dataset": {
            "images": ref.n_images,
            "patients": int(len(np.unique(ref.patients.astype(str)))),
            "class_names": list(ref.class_names),
            "fingerprint": ref.key_params.get("dataset_fingerprint"),
        },
        "splits": {
            "folds": options.run.folds,
            "test_mode": splits.test_mode,
            "seed": options.run.seed,
            "pool_images": int(splits.pool.size),
            "test_images": int(splits.test.size),
            "oof_images": int(rows.size),
            "oof_patients": int(patient_codes(patients).max() + 1) if rows.size else 0,
        },
        "bootstrap": {
            **boot,
            "unit": "patient, drawn with replacement (train-head's resamples)",
            "paired": True,
        },
        "options": {**asdict(options.for_runs()), "sweep": options.sweep},
        "best": entries[best]["name"],
        "backbones": [entries[i] for i in order],
        "probe_note": probe_note(entries),
    }


def probe_note(entries: list[dict]) -> str | None:
    """A line when no backbone's head beats its own linear probe (the paired verdict of each run)."""
    verdicts = [(e.get("verdict") or {}).get("verdict") for e in entries]
    if not verdicts or any(v in (None, "beats") for v in verdicts):
        return None
    if all(v == "loses to" for v in verdicts):
        return "every backbone's head LOSES TO its own linear probe: report the probes, not the heads"
    return (
        "no backbone's head beats its own linear probe (each is indistinguishable from it, is it, or loses)"
    )


def statement(name: str, diff: dict[str, Any], level: float) -> str:
    """One plain sentence: the AUC difference against the best and whether it is distinguishable from 0."""
    auc = diff.get("auc")
    if auc is None:
        return f"{name} vs {diff['best']}: no paired AUC bootstrap (it needs two classes)"
    verdict = (
        "distinguishable from zero"
        if auc["distinguishable"]
        else "not distinguishable from zero (the interval includes 0)"
    )
    return (
        f"{name} vs {diff['best']}: pooled out-of-fold AUC difference {auc['difference']:+.4f}, "
        f"{level:.0%} paired patient-bootstrap CI [{auc['low']:+.4f}, {auc['high']:+.4f}]: {verdict}"
    )


def add_costs(comparison: Comparison, costs: dict[str, dict[str, Any]]) -> Comparison:
    """Record measured costs (``{name: {"params": ..., "latency_ms": ..., ...}}``) and rewrite the outputs."""
    for entry in comparison.backbones:
        entry["cost"].update({k: v for k, v in costs.get(entry["name"], {}).items() if v is not None})
    write_outputs(comparison.out, comparison.results)
    return comparison
