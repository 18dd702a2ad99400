"""What a run must say about its data and its result: the warnings of ``metrics.json`` (codes below) and the
head-against-probe verdict. The terminal and the report show the same list.

Codes: ``random_init`` (a backbone with random weights), ``no_patient_groups`` (images that are their own
group), ``duplicates`` / ``leakage`` (byte-identical images, and copies across a split), ``patients`` (patient
IDs that look alike), ``no_positive`` (two classes, none named positive), ``few_patients`` (intervals
unreliable), ``precision`` (features or heads below fp32, and why), ``view_shift``, ``selection``,
``diverged``, ``probe_verdict`` and ``head_is_probe``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fastall.data.positive import PositiveClass
from fastall.features.cache import FeatureCache
from fastall.system.notices import Notices
from fastall.training.config import HeadResult, TrainOptions
from fastall.training.divergence import diverged
from fastall.training.probe import ProbeResult
from fastall.training.uncertainty import MIN_PATIENTS
from fastall.training.verdict import paired_verdict

if TYPE_CHECKING:
    from fastall.training.prepared import Prepared


def own_group_count(cache: FeatureCache) -> int:
    """Labelled images whose patient is their own path: no patient rule grouped them."""
    labelled = cache.labels >= 0
    return int((cache.patients[labelled].astype(str) == cache.paths[labelled].astype(str)).sum())


def data_warnings(cache: FeatureCache, positive: PositiveClass, notes: list[str]) -> Notices:
    """The warnings that the cache alone decides (``notes``: those of ``hygiene.check_rows``)."""
    out = Notices()
    weights = str(cache.key_params.get("weights", "")).lower()
    if weights == "none":
        out.add(
            "random_init",
            "the backbone has random weights (--weights none): its features are not ImageNet features, so "
            "these scores say nothing about the paper's method; extract with real weights "
            "(--weights imagenet1k_v1, or --weights FILE.pth)",
        )
    own, n = own_group_count(cache), int((cache.labels >= 0).sum())
    if own:
        out.add(
            "no_patient_groups",
            f"{own} of {n} images have no patient group (no --patients file, --patient-regex or C-NMC name): "
            "each is its own group, so patient-level splitting is impossible, cells of one patient can sit "
            "on both sides of a split and scores are optimistic; give patients with --patients FILE.csv or "
            "--patient-regex",
        )
    for note in notes:
        out.add("duplicates" if "byte-identical" in note or "--dedupe" in note else "patients", note)
    if positive.source == "none":
        out.add("no_positive", positive.message)
    patients = len(set(cache.patients[cache.labels >= 0].astype(str)))
    if patients < MIN_PATIENTS:
        out.add(
            "few_patients",
            f"{patients} patients: patient-bootstrap intervals are unreliable (fewer than {MIN_PATIENTS}) "
            "and are marked so, never printed as certain",
        )
    return out


def precision_warning(prep: Prepared) -> str:
    """One line when the features or the heads are not fp32: which precision, and the decision behind it."""
    extracted = str(prep.cache.attrs.get("amp_dtype") or "fp32")
    if extracted == "fp32" and prep.precision == "fp32":
        return ""
    why = prep.precision_record.get("precision_reason") or prep.cache.attrs.get("precision_reason") or ""
    return (
        f"features extracted at {extracted}, heads trained at {prep.precision}"
        + (f" ({why})" if why else "")
        + "; predict runs the model at fp32 by default and verify checks it against these features"
    )


def head_is_probe(results: list[HeadResult], options: TrainOptions) -> bool:
    """Every head kept epoch 0 of a start at the probe: the head is the probe."""
    return options.head_init == "probe" and all(r.best_epoch == 0 for r in results)


def verdict_of(
    prep: Prepared, results: list[HeadResult], probe: ProbeResult, options: TrainOptions, choice: Any = None
) -> dict:
    """The paired verdict of the fold heads' pooled out-of-fold predictions against the probe's
    (``choice``: the default preset's probe-or-MLP choice, when it ran)."""
    kept_probe = choice is not None and all(f["kept"] == "probe" for f in choice.folds)
    folds = [r for r in results if not r.final and not diverged(r)]
    rows = np.concatenate([prep.splits.folds[r.fold][1] for r in folds]) if folds else np.array([], int)
    head = np.concatenate([r.probs["val"] for r in folds]) if folds else np.zeros((0, prep.data.classes))
    keep = np.isfinite(probe.oof_probs[rows]).all(1)
    return paired_verdict(
        prep.cache.labels[rows][keep],
        head[keep],
        probe.oof_probs[rows][keep],
        prep.cache.patients[rows][keep],
        classes=prep.data.classes,
        head_is_probe=kept_probe or head_is_probe(results, options),
        seed=options.seed,
    )
