"""What `fastall synth` writes: one ``SynthConfig``, declared once.

Each field is a :func:`~fastall.system.settings.hparam` (default, help, choices); the ``fastall synth``
options and :func:`~fastall.data.synth.synthesize`'s keyword arguments come from these declarations. Adding a
setting: declare the field here, read ``config.NAME`` in ``synth.py``, and check it in :meth:`check` when it
has a rule.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fastall.data.cells import BACKGROUNDS, DIFFICULTY, Appearance, appearance
from fastall.errors import FastallError
from fastall.system.seeds import check_seed
from fastall.system.settings import HParam, hparam, hparams_of

LAYOUTS = ("cnmc", "generic")
MAX_CLASSES = 20


@dataclass(frozen=True)
class SynthConfig:
    """Every setting of one synthetic tree (the CLI's defaults); the output folder is the call's argument."""

    patients_per_class: int = hparam(10, "Patients per class (training data).")
    images_per_patient: int = hparam(12, "Mean images per patient (each patient: half to 1.5 times it).")
    size: int = hparam(450, "Image side in pixels.")
    seed: int = hparam(0, "Seed: equal settings write byte-identical trees.")
    prelim: bool | None = hparam(
        None, "The C-NMC prelim-phase folder and its labels CSV [on, unless --like-manifest]."
    )
    testing: bool = hparam(False, "Also write unlabelled testing_data.")
    like_manifest: str | None = hparam(
        None, "Reproduce the training names of a manifest (lines like training_data/fold_0/all/NAME.bmp)."
    )
    max_per_patient: int | None = hparam(None, "Keep the first N images of each patient of --like-manifest.")
    layout: str = hparam(
        "cnmc",
        "cnmc: the C-NMC 2019 tree; generic: OUT/class<k>/P<patient>_<image>.bmp.",
        choices=LAYOUTS,
    )
    classes: int = hparam(2, "Classes of a generic tree.")
    background: str = hparam(
        "black",
        "black (C-NMC), light (bright-field slide), smear (light, faint neighbouring red cells).",
        choices=BACKGROUNDS,
    )
    difficulty: str = hparam(
        "easy",
        "easy: the demo's wide class margin; hard: margin 0.5, patient effects twice as large (about the "
        "class effect).",
        choices=tuple(DIFFICULTY),
    )
    class_margin: float | None = hparam(None, "Gap between classes, -1..1 [difficulty].")
    patient_effect: float | None = hparam(None, "Spread of patient looks, 0..5 [difficulty].")
    overwrite: bool = hparam(False, "Replace a non-empty synthetic tree.")

    @staticmethod
    def settings() -> tuple[HParam, ...]:
        return hparams_of(SynthConfig)

    @classmethod
    def of(cls, config: SynthConfig | None = None, **settings: Any) -> SynthConfig:
        """``config`` (or the defaults) with ``settings`` on top, checked."""
        unknown = sorted(set(settings) - {s.name for s in cls.settings()})
        if unknown:
            raise FastallError(f"synth has no setting {', '.join(unknown)}")
        if settings.get("like_manifest") is not None:
            settings["like_manifest"] = str(settings["like_manifest"])
        return replace(config or cls(), **settings).check()

    @property
    def look(self) -> Appearance:
        """Background and difficulty, resolved."""
        return appearance(self.background, self.difficulty, self.class_margin, self.patient_effect)

    def check(self) -> SynthConfig:
        checks = [
            (
                self.patients_per_class < 1,
                f"patients per class must be at least 1, got {self.patients_per_class}",
            ),
            (
                self.images_per_patient < 1,
                f"images per patient must be at least 1, got {self.images_per_patient}",
            ),
            (not 8 <= self.size <= 4096, f"image size must be between 8 and 4096 pixels, got {self.size}"),
            (
                self.max_per_patient is not None and self.max_per_patient < 1,
                f"max per patient must be at least 1, got {self.max_per_patient}",
            ),
        ]
        for failed, message in checks:
            if failed:
                raise FastallError(message)
        check_seed(self.seed)
        self._check_layout()
        self.look  # noqa: B018 - appearance() checks background, difficulty, margin and effect
        return self

    def _check_layout(self) -> None:
        if self.layout not in LAYOUTS:
            raise FastallError(f"layout {self.layout!r}: use {' or '.join(LAYOUTS)}")
        if self.layout == "cnmc":
            if self.classes != 2:
                raise FastallError(
                    f"the C-NMC layout has 2 classes, got {self.classes} (use --layout generic)"
                )
            return
        if not 2 <= self.classes <= MAX_CLASSES:
            raise FastallError(f"classes must be between 2 and {MAX_CLASSES}, got {self.classes}")
        manifest = self.like_manifest is not None
        unsupported = [(self.testing, "--testing"), (manifest, "--like-manifest"), (self.prelim, "prelim")]
        for used, name in unsupported:
            if used:
                raise FastallError(f"{name} needs the C-NMC layout (--layout cnmc)")
