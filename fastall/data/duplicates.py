"""Duplicate content and look-alike patient IDs: the quiet ways one image or one patient is counted twice.

Identical bytes under two classes or two patients (a copy renamed) put the same image on both sides of a
split; patient IDs that differ only in leading zeros (``UID_003`` / ``UID_03`` / ``UID_3``) make one patient
three, so a patient-level split no longer keeps that patient on one side.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

_LEADING_ZEROS = re.compile(r"(?<![0-9])0+(?=[0-9])")


def strip_leading_zeros(patient: str) -> str:
    """``UID_003`` -> ``UID_3``, ``H007`` -> ``H7`` (every run of digits)."""
    return _LEADING_ZEROS.sub("", str(patient))


def lookalike_patients(patients: Sequence[str]) -> list[list[str]]:
    """Groups of distinct patient IDs that are the same once leading zeros are dropped."""
    groups: dict[str, set[str]] = defaultdict(set)
    for p in patients:
        groups[strip_leading_zeros(p)].add(str(p))
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def lookalike_warning(patients: Sequence[str]) -> str | None:
    groups = lookalike_patients(patients)
    if not groups:
        return None
    shown = "; ".join(" / ".join(g) for g in groups[:3])
    more = f" and {len(groups) - 3} more group(s)" if len(groups) > 3 else ""
    return (
        f"patient IDs that differ only in leading zeros are treated as different patients: {shown}{more}; "
        "if they are one patient, rename the files (else a patient-level split can leak)"
    )


@dataclass
class DuplicateGroup:
    """Rows with byte-identical files."""

    rows: list[int]
    across_classes: bool
    across_patients: bool


def duplicate_groups(
    hashes: Sequence[str], labels: Sequence[int], patients: Sequence[str]
) -> list[DuplicateGroup]:
    """Every set of two or more rows with the same content hash (rows without a hash are ignored)."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        if h:
            by_hash[str(h)].append(i)
    return [
        DuplicateGroup(
            rows,
            len({int(labels[i]) for i in rows}) > 1,
            len({str(patients[i]) for i in rows}) > 1,
        )
        for rows in by_hash.values()
        if len(rows) > 1
    ]


def duplicate_warning(
    groups: list[DuplicateGroup], paths: Sequence[str], advice: str = "train-head --dedupe keeps one copy"
) -> str | None:
    """One line on duplicates that cross classes or patients (copies within one patient are harmless)."""
    crossing = [g for g in groups if g.across_classes or g.across_patients]
    if not crossing:
        return None
    classes = sum(g.across_classes for g in crossing)
    first = crossing[0]
    return (
        f"{sum(len(g.rows) for g in crossing)} images are byte-identical copies across patients or classes "
        f"({len(crossing)} group(s), {classes} across classes), e.g. "
        f"{' = '.join(str(paths[i]) for i in first.rows[:3])}: the same image can sit on both sides of a "
        f"split; {advice}"
    )


def dedupe_rows(groups: list[DuplicateGroup], labels: Sequence[int], n: int) -> tuple[list[int], int, int]:
    """``(rows kept, copies dropped, rows dropped for disagreeing labels)``: one copy of each group whose
    labels agree (the first); none of a group whose copies carry different labels."""
    drop: set[int] = set()
    conflicting = 0
    for g in groups:
        if len({int(labels[i]) for i in g.rows}) > 1:
            drop.update(g.rows)
            conflicting += len(g.rows)
        else:
            drop.update(g.rows[1:])
    return [i for i in range(n) if i not in drop], len(drop) - conflicting, conflicting
