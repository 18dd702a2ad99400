"""Deterministic synthetic data, a drawn cell per 24-bit BMP: the C-NMC 2019 tree, or a generic K-class tree.

Layouts: ``cnmc``, the real C-NMC tree and names (folds, prelim phase, unlabelled testing phase); ``generic``,
``root/class<k>/P<patient>_<image>.bmp`` with the patient in the file name (:data:`GENERIC_PATIENT_REGEX`).
The cells (:mod:`fastall.data.cells`) differ in coarse morphology so that even a random-init ResNet-50 can
separate the classes; every patient has its own stain, illumination, cell size and typicality, so image-level
splits score higher than patient-level ones. ``difficulty`` ``easy`` (the default) keeps the wide class margin
of the demo (a random-init ResNet-50 and the paper's head reach about 0.96-0.99 patient-level CV accuracy);
``hard`` narrows the margin and doubles patient effects (about as large as the class effect);
``class_margin`` and ``patient_effect`` set either directly. Backgrounds: black (C-NMC), light, smear (light
with red cells).

Defaults: 10 patients per class, about 12 images each, 450 px, plus 3 prelim-phase patients per class (about
240 training and 70 prelim images, a few seconds).
"""

from __future__ import annotations

import re
import shutil
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastall.data.cells import (
    Appearance,
    background_params,
    bmp_bytes,
    image_params,
    patient_look,
    render,
    slide_colour,
    typicality_ranges,
)
from fastall.data.discover import CNMC_CLASSES, PRELIM_CSV, PRELIM_DIR, TESTING_DIR, parse_cnmc_name
from fastall.data.synth_config import SynthConfig
from fastall.errors import FastallError
from fastall.system.events import Reporter, silent

_bmp_bytes = bmp_bytes  # the name tests/bad_inputs.py imports

TREE = "C-NMC_Leukemia"
_MANIFEST_LINE = re.compile(r"training_data/(fold_\d+)/(all|hem)/([^/]+)")
_PIXELS_PER_BATCH = 1_500_000
GENERIC_PATIENT_REGEX = r"^(P\d+)_"


@dataclass(frozen=True)
class _Item:
    folder: str
    file: str
    patient: str
    cls: str
    source: str
    original: str


@dataclass
class SynthSummary:
    """What ``synthesize`` wrote. ``testing_labels`` holds the truth the testing folder does not carry;
    ``patient_regex`` is the ``--patient-regex`` a generic tree needs."""

    root: Path
    images: int
    patients: int
    patients_per_class: dict[str, int]
    per_source: dict[str, dict[str, int]]
    size: int
    seed: int
    seconds: float
    testing_labels: dict[str, int] = field(default_factory=dict)
    layout: str = "cnmc"
    class_names: list[str] = field(default_factory=lambda: list(CNMC_CLASSES))
    appearance: Appearance = field(default_factory=Appearance)
    patient_regex: str | None = None


def synthesize(
    out: str | Path, config: SynthConfig | None = None, *, reporter: Reporter | None = None, **settings: Any
) -> SynthSummary:
    """Write a synthetic tree (``out/C-NMC_Leukemia``, or ``out`` itself for ``layout="generic"``).

    ``config``: every setting (:class:`~fastall.data.synth_config.SynthConfig`); ``settings``: fields of it by
    name, on top (``synthesize(out, size=64, layout="generic")``). The number of images per patient varies
    around ``images_per_patient`` (half to one and a half times). ``like_manifest`` reproduces the training
    names of a manifest (lines like ``training_data/fold_0/all/UID_11_10_1_all.bmp``), keeping the first
    ``max_per_patient`` of each patient if given. ``prelim`` (None: on, unless ``like_manifest``) adds the
    prelim-phase folder and labels CSV; ``testing`` the unlabelled final-phase folder. A generic tree has
    ``classes`` class folders. Byte-identical output for equal settings. Progress: the ``synthesising`` task
    of ``reporter`` (silent by default).
    """
    cfg = SynthConfig.of(config, **settings)
    start = time.perf_counter()
    look, seed, images_per_patient = cfg.look, cfg.seed, cfg.images_per_patient
    generic = cfg.layout == "generic"
    names = _class_names(cfg.classes) if generic else list(CNMC_CLASSES)
    prelim = False if generic else (cfg.like_manifest is None if cfg.prelim is None else cfg.prelim)
    root = Path(out) if generic else Path(out) / TREE
    _clear(root, names if generic else None, cfg.overwrite)
    rng = np.random.default_rng([seed, 1])
    if generic:
        items = _generic_items(rng, seed, names, cfg.patients_per_class, images_per_patient)
    elif cfg.like_manifest is not None:
        items = _manifest_items(Path(cfg.like_manifest))
    else:
        items = _training_items(rng, seed, cfg.patients_per_class, images_per_patient)
    if cfg.max_per_patient is not None:
        kept: Counter[str] = Counter()
        items = [it for it in items if (kept.update([it.patient]) or kept[it.patient] <= cfg.max_per_patient)]
    extra_patients = max(1, round(0.3 * cfg.patients_per_class))
    next_number = _next_numbers(items) if not generic else {}
    testing_labels: dict[str, int] = {}
    if prelim:
        prelim_items = _extra_items(
            rng, seed, extra_patients, images_per_patient, next_number, "prelim", PRELIM_DIR
        )
        items += prelim_items
        _write_prelim_csv(root, prelim_items)
    if cfg.testing:
        test_items = _extra_items(
            rng, seed, extra_patients, images_per_patient, next_number, "testing", TESTING_DIR
        )
        items += test_items
        testing_labels = {it.file: CNMC_CLASSES.index(it.cls) for it in test_items}
    ranges = dict(zip(names, typicality_ranges(len(names), look.class_margin), strict=True))
    with (reporter or silent()).task("synthesising", len(items), unit="img", transient=True) as advance:
        _render_all(root, items, cfg.size, seed, advance, look, ranges)
    per_source: dict[str, dict[str, int]] = defaultdict(lambda: {c: 0 for c in names})
    patients: dict[str, set[str]] = defaultdict(set)
    for it in items:
        per_source[it.source][it.cls] += 1
        patients[it.cls].add(it.patient)
    return SynthSummary(
        root=root,
        images=len(items),
        patients=sum(len(p) for p in patients.values()),
        patients_per_class={c: len(patients[c]) for c in names},
        per_source=dict(sorted(per_source.items())),
        size=cfg.size,
        seed=seed,
        seconds=time.perf_counter() - start,
        testing_labels=testing_labels,
        layout=cfg.layout,
        class_names=names,
        appearance=look,
        patient_regex=GENERIC_PATIENT_REGEX if generic else None,
    )


def _class_names(classes: int) -> list[str]:
    return [f"class{k:0{len(str(classes - 1))}d}" for k in range(classes)]


def _clear(root: Path, generic_names: list[str] | None, overwrite: bool) -> None:
    """Refuse a non-empty target unless ``overwrite``; a generic tree only ever removes its class folders."""
    if not root.exists() or not any(root.iterdir()):
        return
    if not overwrite:
        raise FastallError(f"{root} already exists and is not empty; remove it or choose another folder")
    if generic_names is None:
        shutil.rmtree(root)
        return
    ours = re.compile(r"class\d+")
    foreign = sorted(p.name for p in root.iterdir() if not (p.is_dir() and ours.fullmatch(p.name)))
    if foreign:
        raise FastallError(f"{root} holds other files ({foreign[0]}, ...); choose an empty folder")
    for folder in root.iterdir():
        shutil.rmtree(folder)


def _generic_items(
    rng: np.random.Generator, seed: int, names: list[str], per_class: int, mean: int
) -> list[_Item]:
    """Patients ``P<number>`` (numbers shuffled across classes), images ``P<number>_<image>.bmp``."""
    total = per_class * len(names)
    numbers = rng.permutation(total) + 1
    width = max(3, len(str(total)))
    items = []
    for k, cls in enumerate(names):
        for i in range(per_class):
            patient = f"P{int(numbers[k * per_class + i]):0{width}d}"
            prng = np.random.default_rng(_seed_of(seed, 2, patient))
            for j in range(1, _count(prng, mean) + 1):
                name = f"{patient}_{j:03d}.bmp"
                items.append(_Item(cls, name, patient, cls, cls, name))
    return items


def _seed_of(*parts: int | str) -> list[int]:
    return [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]


def _patient_names(rng: np.random.Generator, patient: str, cls: str, count: int) -> list[str]:
    """``count`` names ``UID_<patient>_<image>_<cell>_<cls>.bmp``, one to three cells per image."""
    names, image = [], 0
    while len(names) < count:
        image += 1
        for cell in range(1, int(rng.integers(1, 4)) + 1):
            names.append(f"UID_{patient}_{image}_{cell}_{cls}.bmp")
    return names[:count]


def _count(rng: np.random.Generator, mean: int) -> int:
    return int(rng.integers(max(1, mean - mean // 2), mean + mean // 2 + 1))


def _training_items(rng: np.random.Generator, seed: int, per_class: int, mean: int) -> list[_Item]:
    items = []
    for cls in ("all", "hem"):
        prefix = "H" if cls == "hem" else ""
        order = rng.permutation(per_class)
        for i in range(per_class):
            patient = f"{prefix}{i + 1}"
            fold = f"fold_{int(np.flatnonzero(order == i)[0]) % 3}"
            prng = np.random.default_rng(_seed_of(seed, 2, patient))
            for name in _patient_names(prng, patient, cls, _count(prng, mean)):
                items.append(_Item(f"training_data/{fold}/{cls}", name, patient, cls, fold, name))
    return items


def _manifest_items(path: Path) -> list[_Item]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise FastallError(f"cannot read manifest {path}: {err}") from None
    items = []
    for number, line in enumerate(lines, start=1):
        line = line.strip().removeprefix(f"{TREE}/")
        if not line or line.startswith("#"):
            continue
        m = _MANIFEST_LINE.fullmatch(line)
        parsed = parse_cnmc_name(m.group(3)) if m else None
        if m is None or parsed is None or parsed[1] != m.group(2):
            raise FastallError(f"{path}:{number}: not a C-NMC training image path: {line!r}")
        fold, cls, name = m.groups()
        items.append(_Item(f"training_data/{fold}/{cls}", name, parsed[0], cls, fold, name))
    if not items:
        raise FastallError(f"manifest {path} lists no images")
    return items


def _next_numbers(items: list[_Item]) -> dict[str, int]:
    top = {"all": 0, "hem": 0}
    for it in items:
        top[it.cls] = max(top[it.cls], int(it.patient.lstrip("H")))
    return {c: n + 1 for c, n in top.items()}


def _extra_items(
    rng: np.random.Generator,
    seed: int,
    per_class: int,
    mean: int,
    next_number: dict[str, int],
    source: str,
    folder: str,
) -> list[_Item]:
    """New patients for the prelim or testing folder, shuffled and renamed ``1.bmp, 2.bmp, ...``."""
    originals = []
    for cls in ("all", "hem"):
        for _ in range(per_class):
            patient = f"{'H' if cls == 'hem' else ''}{next_number[cls]}"
            next_number[cls] += 1
            prng = np.random.default_rng(_seed_of(seed, 2, patient))
            originals += [(patient, cls, n) for n in _patient_names(prng, patient, cls, _count(prng, mean))]
    order = rng.permutation(len(originals))
    return [
        _Item(folder, f"{k}.bmp", originals[i][0], originals[i][1], source, originals[i][2])
        for k, i in enumerate(order, start=1)
    ]


def _write_prelim_csv(root: Path, items: list[_Item]) -> None:
    path = root / PRELIM_CSV
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{it.original},{it.file},{CNMC_CLASSES.index(it.cls)}" for it in items]
    path.write_text("Patient_ID,new_names,labels\n" + "\n".join(rows) + "\n", encoding="utf-8")


def _render_all(
    root: Path,
    items: list[_Item],
    size: int,
    seed: int,
    advance: Callable[[int], None],
    look: Appearance,
    ranges: dict[str, tuple[float, float]],
) -> None:
    by_patient: dict[str, list[_Item]] = defaultdict(list)
    for it in items:
        by_patient[it.patient].append(it)
    for folder in sorted({it.folder for it in items}):
        (root / folder).mkdir(parents=True, exist_ok=True)
    batch = max(1, _PIXELS_PER_BATCH // (size * size))
    for patient, its in by_patient.items():
        prng = np.random.default_rng(_seed_of(seed, 3, patient))
        cells = patient_look(prng, ranges[its[0].cls], look.patient_effect)
        bg_rng = np.random.default_rng(_seed_of(seed, 4, patient))
        slide = slide_colour(bg_rng, look.patient_effect) if look.background != "black" else None
        for lo in range(0, len(its), batch):
            chunk = its[lo : lo + batch]
            params = image_params(prng, cells, len(chunk))
            params.update(background_params(bg_rng, look.background, slide, len(chunk)))
            images = render(params, size, prng)
            for it, img in zip(chunk, images, strict=True):
                (root / it.folder / it.file).write_bytes(bmp_bytes(img))
            advance(len(chunk))
