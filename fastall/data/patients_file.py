"""Patients from a file: ``--patients FILE.csv`` with columns ``path,patient`` (paths relative to the data
root, as ``scan`` lists them). It overrides ``--patient-regex`` and C-NMC names for the images it lists.

Checks, each one line: a file that cannot be read or lacks a column, a row whose path is empty, absolute or
leaves the root, a path listed twice, a listed path that is not an image of the data set, and one patient
under two classes (a problem that is not fatal: a patient's sample may hold cells of both kinds, and the
patient-level diagnosis then takes the majority). Images the file does not list keep the other rules (or stay
their own group), and the count is a warning that the terminal and the report both show.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path, PurePosixPath

from fastall.data.records import Dataset
from fastall.errors import FastallError
from fastall.system.csvsafe import MissingColumns, read_table

COLUMNS = ("path", "patient")


def read_patients(path: str | Path) -> dict[str, str]:
    """``{relative path: patient}`` from the CSV; a one-line FastallError for an unusable file."""
    path = Path(path)
    try:
        rows = read_table(path, COLUMNS)
    except MissingColumns as err:
        raise FastallError(f"--patients {path}: {err}; expected path,patient") from err
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
        raise FastallError(f"--patients {path}: cannot read it ({reason})") from err
    out: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        rel, patient = row.get("path", ""), row.get("patient", "")
        where = f"--patients {path}, row {line}"
        pure = PurePosixPath(rel.replace("\\", "/"))
        if not rel or pure.is_absolute() or ".." in pure.parts:
            raise FastallError(f"{where}: path {rel!r} is not a path inside the data root")
        if not patient:
            raise FastallError(f"{where}: {rel} has an empty patient")
        key = pure.as_posix()
        if key in out:
            raise FastallError(f"{where}: {rel} is listed twice")
        out[key] = patient
    if not out:
        raise FastallError(f"--patients {path}: no rows")
    return out


def apply_patients(ds: Dataset, path: str | Path) -> None:
    """Set the patient of every listed image; unknown paths and patients under two classes are problems."""
    mapping = read_patients(path)
    known = {r.rel_path for r in ds.records}
    for rel in sorted(set(mapping) - known):
        ds.add_problem(
            Path(path),
            f"lists {rel}, which is not an image of {ds.root} (paths are relative to it)",
            fatal=True,
        )
    unlisted = 0
    records = []
    for rec in ds.records:
        if rec.rel_path in mapping:
            records.append(replace(rec, patient=mapping[rec.rel_path]))
        else:
            unlisted += rec.label >= 0
            records.append(rec)
    ds.records = records
    classes: dict[str, set[str]] = {}
    for rec in ds.labelled():
        classes.setdefault(rec.patient, set()).add(str(rec.class_name))
    for patient, names in sorted(classes.items()):
        if len(names) > 1:
            ds.add_problem(
                Path(path),
                f"patient {patient} has images under {len(names)} classes ({', '.join(sorted(names))}): "
                "its patient-level label is the majority of its cells",
            )
    if unlisted:
        ds.warnings.append(
            f"{unlisted} labelled image(s) are not in --patients {path}: they keep the other patient rules "
            "(or are each their own group)"
        )
