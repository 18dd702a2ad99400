"""Dataset discovery: the C-NMC 2019 tree or a generic ``root/<class>/**/<image>`` tree, with patient IDs.

Every problem is collected on ``Dataset.problems`` (each naming its file) and its records are left out;
``Dataset.check()`` turns an unusable dataset into one clear error.
"""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from fastall.data.duplicates import lookalike_warning
from fastall.data.patients_file import apply_patients
from fastall.data.records import Dataset, Record
from fastall.data.walk import IMAGE_EXTENSIONS, NOT_UTF8, walk_files
from fastall.errors import FastallError
from fastall.system.csvsafe import MissingColumns, read_table
from fastall.system.names import shown, undecodable

CNMC_CLASSES = ["hem", "all"]
OPTIONAL_SOURCES = ("prelim", "testing")
TRAINING_DIR = "training_data"
PRELIM_DIR = "validation_data/C-NMC_test_prelim_phase_data"
PRELIM_CSV = "validation_data/C-NMC_test_prelim_phase_data_labels.csv"
TESTING_DIR = "testing_data/C-NMC_test_final_phase_data"
CSV_COLUMNS = ("Patient_ID", "new_names", "labels")
SEARCH_DEPTH = 3
CNMC_PATTERN = "UID_<patient>_<image>_<cell>_<all|hem>.bmp"

_CNMC_NAME = re.compile(r"UID_(H?\d+)_\d+_\d+_(all|hem)\.(?:bmp|png|jpe?g|tiff?)", re.IGNORECASE)
_FOLD = re.compile(r"fold_\d+")


def parse_cnmc_name(name: str) -> tuple[str, str] | None:
    """``UID_h3_12_1_hem.bmp`` -> ``("H3", "hem")``; None if the name is not a C-NMC name."""
    m = _CNMC_NAME.fullmatch(name)
    return (m.group(1).upper(), m.group(2).lower()) if m else None


def discover(
    root: str | Path,
    *,
    patient_regex: str | None = None,
    include: Iterable[str] | str = ("prelim",),
    patients: str | Path | None = None,
) -> Dataset:
    """Find every image under ``root``: the C-NMC tree if there is one (a few levels down), else generic.

    ``include`` picks the optional C-NMC sources (``prelim``, ``testing``; the training folds always come).
    ``patient_regex`` (one capture group) gives the patient in a generic tree: searched in the file name, then
    in its path below the class folder; ``patients`` (a ``path,patient`` CSV, ``data.patients_file``) sets
    it for the images it lists, in either layout. Generic class names are sorted into label indices, except
    that ``all``/``hem`` keep the C-NMC order (``hem`` 0, ``all`` 1). The positive class is not decided
    here (``data.positive``).
    """
    root = Path(root)
    if not root.exists():
        raise FastallError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise FastallError(f"not a folder: {root}")
    if undecodable(root.absolute()):
        raise FastallError(f"{shown(root)}: the dataset folder's {NOT_UTF8}")
    include = _parse_include(include)
    regex = compile_patient_regex(patient_regex)
    ds = Dataset(root=root, layout="generic")
    found = _find_cnmc(root, ds)
    if found is not None:
        ds.layout, ds.class_names = "cnmc", list(CNMC_CLASSES)
        if regex is not None:
            ds.warnings.append("--patient-regex is ignored for the C-NMC layout (UID names give patients)")
        _discover_cnmc(ds, *found, include)
    else:
        _discover_generic(ds, regex)
    ds.records.sort(key=lambda r: (r.source, r.rel_path))
    if patients is not None:
        apply_patients(ds, patients)
    own = sum(1 for r in ds.labelled() if r.patient == r.rel_path)
    if own:
        ds.warnings.append(
            f"{own} image(s) match no patient rule (no --patients file, --patient-regex or C-NMC UID "
            "name): each is its own group, so patient-level splitting is impossible and "
            "scores will be optimistic"
        )
    _same_files(ds)
    named = [r.patient for r in ds.labelled() if r.patient != r.rel_path]
    lookalike = lookalike_warning(sorted(set(named)))
    if lookalike:
        ds.warnings.append(lookalike)
    return ds


def _same_files(ds: Dataset) -> None:
    """A file reached twice (a symlink, a hard link): fatal under two classes, else the second is skipped."""
    first: dict[tuple[int, int], Record] = {}
    keep = []
    for rec in ds.records:
        try:
            st = os.stat(rec.path)
        except OSError:
            keep.append(rec)
            continue
        seen = first.setdefault((st.st_dev, st.st_ino), rec)
        if seen is rec:
            keep.append(rec)
        elif seen.class_name != rec.class_name:
            ds.add_problem(
                rec.path,
                f"the same file as {seen.rel_path} (class {seen.class_name}) reached again under class "
                f"{rec.class_name} through a symlink or hard link: one image cannot have two labels",
                fatal=True,
            )
        else:
            ds.add_problem(rec.path, f"the same file as {seen.rel_path} (a symlink or hard link); skipped")
    ds.records = keep


def compile_patient_regex(pattern: str | None) -> re.Pattern | None:
    """Compile a patient regex, which must have exactly one capture group."""
    if pattern is None:
        return None
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise FastallError(f"invalid --patient-regex {pattern!r}: {err}") from err
    if regex.groups != 1:
        raise FastallError(
            f"--patient-regex {pattern!r} must have exactly one capture group, has {regex.groups}"
        )
    empty = regex.search("")
    if empty is not None and not empty.group(1):
        raise FastallError(
            f"--patient-regex {pattern!r}: its group can capture an empty patient ID; make it match at least "
            r"one character, e.g. '(P\d+)_'"
        )
    return regex


def _parse_include(include: Iterable[str] | str) -> set[str]:
    items = include.split(",") if isinstance(include, str) else list(include)
    wanted = {s.strip().lower() for s in items if s.strip()}
    unknown = sorted(wanted - set(OPTIONAL_SOURCES))
    if unknown:
        raise FastallError(f"unknown source(s) to include: {', '.join(unknown)} (choose prelim, testing)")
    return wanted


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(
            (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
        )
    except OSError:
        return []


def _has_folds(folder: Path) -> bool:
    return any(_FOLD.fullmatch(p.name) for p in _subdirs(folder))


def _find_cnmc(root: Path, ds: Dataset) -> tuple[Path, Path | None] | None:
    """(training folder, C-NMC base folder or None) of the shallowest C-NMC tree; None if there is none."""
    if _has_folds(root) and not (root / TRAINING_DIR).is_dir():
        ds.warnings.append(f"{root} looks like the training_data folder: only the training folds are used")
        return root, None
    level = [root]
    for _ in range(SEARCH_DEPTH + 1):
        hits = [d for d in level if _has_folds(d / TRAINING_DIR)]
        if hits:
            if len(hits) > 1:
                others = ", ".join(map(str, hits[1:]))
                ds.warnings.append(f"several C-NMC trees found, using {hits[0]} (not {others})")
            return hits[0] / TRAINING_DIR, hits[0]
        level = [sub for d in level for sub in _subdirs(d)]
    return None


def _rel(ds: Dataset, path: Path) -> str:
    return path.relative_to(ds.root).as_posix()


def _images(ds: Dataset, folder: Path) -> list[Path] | None:
    """Image files under ``folder``; every other file is a (non-fatal) problem, and so is a symlink (file or
    folder) leaving ``folder`` (``walk``'s one rule). A class folder that is a symlink out of the data root
    is a fatal problem, and None (not also an "empty class folder")."""
    images: list[Path] = []
    target = Path(os.path.realpath(folder))
    if not target.is_relative_to(os.path.realpath(ds.root)):
        ds.add_problem(folder, f"class folder leads to {target}, outside the data root: refused", fatal=True)
        return None
    report = lambda where, message: ds.add_problem(where, f"{message}; skipped")  # noqa: E731
    for path in walk_files(folder, report, inside=folder):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        else:
            ds.add_problem(path, "not an image file; skipped")
    return images


def _discover_cnmc(ds: Dataset, training: Path, base: Path | None, include: set[str]) -> None:
    candidates: list[tuple[str, Record]] = []
    for fold in (d for d in _subdirs(training) if _FOLD.fullmatch(d.name)):
        candidates += _cnmc_fold(ds, fold)
    if base is not None and "prelim" in include:
        candidates += _cnmc_prelim(ds, base)
    by_name: dict[str, list[Record]] = defaultdict(list)
    for name, rec in candidates:
        by_name[name.lower()].append(rec)
    for recs in by_name.values():
        if len(recs) == 1:
            ds.records.append(recs[0])
            continue
        for rec in recs:
            others = ", ".join(r.rel_path for r in recs if r is not rec)
            ds.add_problem(rec.path, f"duplicate image name (also {others})", fatal=True)
    if base is not None and "testing" in include:
        _cnmc_testing(ds, base)
    folds_of = defaultdict(set)
    for rec in ds.records:
        if rec.source.startswith("fold_"):
            folds_of[rec.patient].add(rec.source)
    split = sorted(p for p, folds in folds_of.items() if len(folds) > 1)
    if split:
        ds.warnings.append(f"patients in more than one fold: {', '.join(split)}")


def _cnmc_fold(ds: Dataset, fold: Path) -> list[tuple[str, Record]]:
    out = []
    subs = {d.name.lower(): d for d in _subdirs(fold)}
    for extra in sorted(set(subs) - {"all", "hem"}):
        ds.add_problem(subs[extra], "unexpected folder (not all/ or hem/); skipped")
    for cls in ("all", "hem"):
        folder = subs.get(cls)
        if folder is None:
            ds.add_problem(fold / cls, "missing class folder", fatal=True)
            continue
        images = _images(ds, folder)
        if images is None:
            continue
        for path in images:
            parsed = parse_cnmc_name(path.name)
            if parsed is None:
                ds.add_problem(path, f"name does not match {CNMC_PATTERN}; skipped")
                continue
            patient, suffix = parsed
            if suffix != cls:
                ds.add_problem(path, f"name says {suffix} but the file is in the {cls} folder", fatal=True)
            elif patient.startswith("H") != (cls == "hem"):
                ds.add_problem(
                    path,
                    f"patient {patient} disagrees with class {cls} (normal patients, and "
                    "only they, carry an H prefix); skipped",
                )
            else:
                label = CNMC_CLASSES.index(cls)
                out.append((path.name, Record(path, _rel(ds, path), label, cls, patient, fold.name)))
        if not images:
            ds.add_problem(folder, "empty class folder (no images)", fatal=True)
    return out


def _read_csv(ds: Dataset, path: Path) -> list[dict[str, str]] | None:
    try:
        return read_table(path, CSV_COLUMNS)
    except MissingColumns as err:
        ds.add_problem(path, f"labels CSV {err}", fatal=True)
        return None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        reason = "file not found" if isinstance(err, FileNotFoundError) else str(err).replace("\n", " ")
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.strerror:
            reason = err.strerror
        ds.add_problem(path, f"cannot read labels CSV ({reason})", fatal=True)
        return None


def _cnmc_prelim(ds: Dataset, base: Path) -> list[tuple[str, Record]]:
    folder, csv_path = base / PRELIM_DIR, base / PRELIM_CSV
    if not folder.is_dir():
        ds.warnings.append(f"no prelim-phase folder ({folder}); only the training folds are used")
        return []
    rows = _read_csv(ds, csv_path)
    if rows is None:
        return []
    files = {path.relative_to(folder).as_posix(): path for path in _images(ds, folder) or []}
    out, seen = [], {}
    for line, row in enumerate(rows, start=2):
        new, original, label = row.get("new_names", ""), row.get("Patient_ID", ""), row.get("labels", "")
        where = f"row {line} of the labels CSV"
        if not new or new in (".", "..") or "/" in new or "\\" in new or os.path.isabs(new):
            ds.add_problem(
                csv_path, f"{where}: new_names {new!r} is not a plain file name in {PRELIM_DIR}", fatal=True
            )
            continue
        if new in seen:
            ds.add_problem(csv_path, f"{where}: duplicate row for {new} (first: row {seen[new]})", fatal=True)
            continue
        seen[new] = line
        path = folder / new
        if label not in ("0", "1"):
            ds.add_problem(path, f"{where}: labels must be 0 or 1, got {label!r}", fatal=True)
            continue
        parsed = parse_cnmc_name(original)
        cls = CNMC_CLASSES[int(label)]
        if parsed is None:
            ds.add_problem(path, f"{where}: Patient_ID {original!r} does not match {CNMC_PATTERN}; skipped")
        elif parsed[1] != cls:
            ds.add_problem(
                path, f"{where}: Patient_ID {original} says {parsed[1]} but labels says {label}", fatal=True
            )
        elif new not in files:
            ds.add_problem(path, f"{where} names this file: missing")
        else:
            out.append((original, Record(path, _rel(ds, path), int(label), cls, parsed[0], "prelim")))
    for name in sorted(set(files) - set(seen)):
        ds.add_problem(files[name], "not listed in the labels CSV; skipped")
    return out


def _cnmc_testing(ds: Dataset, base: Path) -> None:
    folder = base / TESTING_DIR
    if not folder.is_dir():
        ds.warnings.append(f"no final-phase testing folder ({folder})")
        return
    for path in _images(ds, folder) or []:
        ds.records.append(Record(path, _rel(ds, path), -1, None, f"unknown:{path.name}", "testing"))


def _discover_generic(ds: Dataset, regex: re.Pattern | None) -> None:
    class_dirs = _subdirs(ds.root)
    for folder in [d for d in class_dirs if undecodable(d.name)]:
        ds.add_problem(folder, f"class folder: {NOT_UTF8}", fatal=True)
        class_dirs.remove(folder)
    if sorted(d.name.lower() for d in class_dirs) == ["all", "hem"]:
        class_dirs.sort(key=lambda d: d.name.lower() == "all")
    ds.class_names = [d.name for d in class_dirs]
    try:
        loose = sorted(p for p in ds.root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    except OSError:
        loose = []
    for path in loose:
        ds.add_problem(path, "image outside any class folder; skipped")
    if not class_dirs:
        ds.warnings.append(f"{ds.root} has no class folders (expected <root>/<class>/<images>)")
    for label, folder in enumerate(class_dirs):
        images = _images(ds, folder)
        if images is None:
            continue
        for path in images:
            rel, inner = _rel(ds, path), path.relative_to(folder).as_posix()
            if regex is not None:
                m = regex.search(path.name) or regex.search(inner)
                if not m or not m.group(1):
                    ds.add_problem(path, f"name does not match --patient-regex {regex.pattern!r}; skipped")
                    continue
                patient = m.group(1)
            else:
                parsed = parse_cnmc_name(path.name)
                patient = parsed[0] if parsed else rel
            ds.records.append(Record(path, rel, label, folder.name, patient, folder.name))
        if not images:
            ds.add_problem(folder, "empty class folder (no images)", fatal=True)
