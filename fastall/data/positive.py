"""The positive (disease) class of a labelled cell set: declared, recognised by name, or none.

Labels follow sorted folder names, so the disease class is label 0 whenever its folder sorts first
(``blast/`` before ``normal/``). Nothing may assume "label 1 is the disease". The rule, in order:

1. ``--positive CLASS`` names it (exact, case-sensitive folder name);
2. the positive class recorded with the cache or run;
3. with two classes, the one class whose name is a known disease word (``DISEASE_WORDS``, matched per word
   of the name, so ``ALL_cells`` and ``blasts`` count and ``non-malignant`` does not);
4. otherwise none: sensitivity, specificity, PPV, NPV and ``sens=`` thresholds are refused and the run says
   how to name the class with ``--positive``. Never "the last folder".

With more than two classes there is no positive class: every class gets its own one-vs-rest metrics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastall.errors import FastallError

DISEASE_WORDS = frozenset(
    {
        "all",
        "aml",
        "cll",
        "cml",
        "blast",
        "blasts",
        "leukemia",
        "leukaemia",
        "leukemic",
        "leukaemic",
        "malignant",
        "malignancy",
        "cancer",
        "cancerous",
        "tumour",
        "tumor",
        "abnormal",
        "positive",
    }
)
NEGATIONS = frozenset({"non", "not", "no", "benign", "normal", "healthy", "negative", "hem"})
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class PositiveClass:
    """The positive class (``name``/``index``, both None when there is none) and how it was decided."""

    name: str | None
    index: int | None
    source: str  # "--positive" | "recorded" | "disease name" | "none" | "multi-class"
    message: str

    def record(self) -> dict:
        return {"name": self.name, "index": self.index, "source": self.source, "message": self.message}

    @property
    def label(self) -> str:
        """How text names it: the folder name, or ``positive class`` when there is none."""
        return self.name if self.name is not None else "positive class"


def is_disease_name(name: str) -> bool:
    """True when a word of ``name`` is a disease word and none is a negation (``non``, ``benign``, ...)."""
    words = _WORD.findall(name.lower())
    return any(w in DISEASE_WORDS for w in words) and not any(w in NEGATIONS for w in words)


def resolve_positive(
    class_names: list[str], requested: str | None = None, recorded: str | None = None
) -> PositiveClass:
    """The positive class of ``class_names`` by the rule of the module docstring; a one-line FastallError for
    a ``requested`` class that does not exist or a ``--positive`` with more than two classes."""
    names = list(class_names)
    if requested is not None:
        if requested not in names:
            near = [c for c in names if c.lower() == requested.lower()]
            hint = f" (names are case-sensitive: did you mean {near[0]!r}?)" if near else ""
            raise FastallError(
                f"--positive {requested!r} is not a class of this data set "
                f"(classes: {', '.join(names)}){hint}"
            )
        if len(names) != 2:
            raise FastallError(
                f"--positive needs exactly two classes, this data set has {len(names)} "
                f"({', '.join(names)}): every class gets its own one-vs-rest metrics instead"
            )
        return PositiveClass(requested, names.index(requested), "--positive", f"positive class {requested!r}")
    if len(names) != 2:
        return PositiveClass(
            None, None, "multi-class", f"{len(names)} classes: one-vs-rest metrics per class"
        )
    if recorded and recorded in names:
        message = f"positive class {recorded!r} (recorded with the cache)"
        return PositiveClass(recorded, names.index(recorded), "recorded", message)
    hits = [c for c in names if is_disease_name(c)]
    if len(hits) == 1:
        name = hits[0]
        return PositiveClass(
            name,
            names.index(name),
            "disease name",
            f"positive class {name!r} (a disease name; say --positive to choose another)",
        )
    why = "both class names are disease words" if hits else "neither class name is a known disease word"
    return PositiveClass(
        None,
        None,
        "none",
        f"no positive class: {why} ({', '.join(names)}), so sensitivity, specificity, PPV and NPV are not "
        f"reported; name the disease class with --positive {names[0]} or --positive {names[1]}",
    )


def require_positive(positive: PositiveClass, what: str) -> int:
    """The positive class index, or a one-line FastallError saying that ``what`` needs ``--positive``."""
    if positive.index is None:
        raise FastallError(f"{what} needs a positive class: {positive.message}")
    return positive.index


def class_attrs(class_names: list[str], layout: str, requested: str | None) -> tuple[dict, str]:
    """The cache attributes that give the classes their meaning (not in the key: they do not change the
    features): the layout and the positive class; and the line that says which class is positive."""
    chosen = resolve_positive(class_names, requested)
    message = "" if chosen.source == "multi-class" else chosen.message
    return {"layout": layout, "positive_class": chosen.name or ""}, message
