"""What discovery found: a ``Record`` per image, the ``Problem`` list, the ``Dataset`` with its counts."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fastall.errors import FastallError
from fastall.system.names import shown


@dataclass(frozen=True)
class Record:
    """One image. ``label`` is -1 (and ``class_name`` None) for unlabelled images."""

    path: Path
    rel_path: str
    label: int
    class_name: str | None
    patient: str
    source: str


@dataclass
class Problem:
    """Something wrong with one file or folder; fatal problems make the dataset unusable."""

    path: str
    message: str
    fatal: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Dataset:
    """The discovered images (sorted by source, then rel_path) and everything found wrong on the way."""

    root: Path
    layout: str
    records: list[Record] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add_problem(self, path: str | Path, message: str, fatal: bool = False) -> None:
        self.problems.append(Problem(shown(path), message, fatal))

    @property
    def fatal_problems(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    def labelled(self) -> list[Record]:
        return [r for r in self.records if r.label >= 0]

    def unlabelled(self) -> list[Record]:
        return [r for r in self.records if r.label < 0]

    @property
    def sources(self) -> list[str]:
        return sorted({r.source for r in self.records})

    def patients(self) -> list[str]:
        """Distinct patients of the labelled images."""
        return sorted({r.patient for r in self.labelled()})

    def class_counts(self) -> dict[str, int]:
        """Labelled images per class name (every class, zeros included)."""
        return _tally(self.records, self.class_names)["per_class"]

    def patient_class_counts(self) -> dict[str, int]:
        """Distinct patients per class name."""
        return _tally(self.records, self.class_names)["patients_per_class"]

    def patient_counts(self) -> dict[str, int]:
        """Labelled images per patient."""
        return dict(sorted(Counter(r.patient for r in self.labelled()).items()))

    def source_counts(self) -> dict[str, dict]:
        """Per source: images, labelled patients, unlabelled images, and images and patients per class."""
        return {s: _tally([r for r in self.records if r.source == s], self.class_names) for s in self.sources}

    def check(self, *, training: bool = True) -> None:
        """Raise a one-line ``FastallError`` on fatal problems, no images or (training) one class."""
        fatal = self.fatal_problems
        if fatal:
            raise FastallError(
                f"{len(fatal)} fatal problem(s) in {self.root}, first: {fatal[0]} "
                f"(run `fastall scan {self.root}` for the full list)"
            )
        if not self.records:
            raise FastallError(
                f"no images found in {self.root} (expected C-NMC_Leukemia/training_data/"
                "fold_*/{all,hem}/*.bmp or <root>/<class>/<images>)"
            )
        if training:
            present = [c for c, n in self.class_counts().items() if n]
            if len(present) < 2:
                found = present[0] if present else "none"
                raise FastallError(
                    f"{self.root}: training needs labelled images of at least two classes, found: {found}"
                )

    def summary(self) -> dict:
        """JSON-ready counts, warnings and problems (what `fastall scan` shows)."""
        total = _tally(self.records, self.class_names)
        n = total["images"] - total["unlabelled"]
        return {
            "root": str(self.root),
            "layout": self.layout,
            "class_names": list(self.class_names),
            "images": total["images"],
            "labelled_images": n,
            "unlabelled_images": total["unlabelled"],
            "patients": total["patients"],
            "per_class": {
                c: {
                    "label": i,
                    "images": total["per_class"][c],
                    "patients": total["patients_per_class"][c],
                    "fraction": round(total["per_class"][c] / n, 4) if n else 0.0,
                }
                for i, c in enumerate(self.class_names)
            },
            "per_source": self.source_counts(),
            "warnings": list(self.warnings),
            "problems": [asdict(p) for p in self.problems],
            "fatal_problems": len(self.fatal_problems),
        }


def _tally(records: list[Record], class_names: list[str]) -> dict:
    labelled = [r for r in records if r.label >= 0]
    images = Counter(r.class_name for r in labelled)
    patients = {c: {r.patient for r in labelled if r.class_name == c} for c in class_names}
    return {
        "images": len(records),
        "patients": len({r.patient for r in labelled}),
        "unlabelled": len(records) - len(labelled),
        "per_class": {c: images.get(c, 0) for c in class_names},
        "patients_per_class": {c: len(patients[c]) for c in class_names},
    }
