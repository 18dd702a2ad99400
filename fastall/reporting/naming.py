"""How the tables and the page name the metrics of a run: by its positive class (``metrics.json`` →
``classes``), never "ALL" unless that is the class's name; macro averages where there is no positive class."""

from __future__ import annotations

from fastall.reporting.saved_runs import positive_name
from fastall.system.notices import as_records


def class_names(m: dict) -> list[str]:
    return list((m.get("classes") or {}).get("names") or (m.get("cache") or {}).get("class_names") or [])


def negative_name(m: dict) -> str | None:
    pos, names = positive_name(m), class_names(m)
    return next((c for c in names if c != pos), None) if pos and len(names) == 2 else None


def columns(m: dict) -> tuple[tuple[str, str, bool], ...]:
    """The short table columns ``(label, key, percent)``: accuracy, precision and recall of the positive class
    (macro averages without one), F1 and AUC."""
    pos = positive_name(m)
    if pos:
        return (
            ("Acc %", "accuracy", True),
            (f"PPV {pos} %", "precision", True),
            (f"Sens {pos} %", "recall", True),
            (f"F1 {pos}", "f1", False),
            ("AUC", "auc", False),
        )
    return (
        ("Acc %", "accuracy", True),
        ("Macro prec %", "precision", True),
        ("Macro rec %", "recall", True),
        ("Macro F1", "f1", False),
        ("AUC" if len(class_names(m)) <= 2 else "Macro AUC", "auc", False),
    )


def clinical_rows(m: dict) -> tuple[tuple[str, str, str, bool], ...]:
    """``(label, short label, key, percent)`` of the clinical summary, named by the positive class."""
    pos, neg = positive_name(m), negative_name(m)
    one_sided = (
        (
            (f"Sensitivity (recall of {pos}) %", f"Sens {pos} %", "recall", True),
            (f"Specificity (recall of {neg}) %", f"Spec {neg} %", "specificity", True),
            (f"Precision (PPV, {pos}) %", f"PPV {pos} %", "precision", True),
            (f"NPV ({neg}) %", f"NPV {neg} %", "npv", True),
            (f"F1 ({pos})", f"F1 {pos}", "f1", False),
        )
        if pos
        else (
            ("Macro recall %", "Macro rec %", "recall", True),
            ("Macro precision %", "Macro prec %", "precision", True),
            ("Macro F1", "Macro F1", "f1", False),
        )
    )
    return (
        ("Accuracy %", "Acc %", "accuracy", True),
        ("Balanced accuracy %", "Bal. acc %", "balanced_accuracy", True),
        *one_sided,
        ("Weighted F1 (C-NMC 2019)" if m.get("paper") else "Weighted F1", "wF1", "f1_weighted", False),
        ("MCC", "MCC", "mcc", False),
        ("ROC AUC" if len(class_names(m)) <= 2 else "ROC AUC (macro, one-vs-rest)", "AUC", "auc", False),
        *(
            (("ROC AUC (weighted, one-vs-rest)", "wAUC", "auc_weighted", False),)
            if len(class_names(m)) > 2
            else ()
        ),
        ("PR AUC (average precision)", "PR AUC", "pr_auc", False),
        ("Brier score", "Brier", "brier", False),
    )


def groups_checkable(m: dict) -> bool:
    """False when images were their own patient groups: a leakage audit of patients checks nothing."""
    return not any(w["code"] == "no_patient_groups" for w in as_records(m.get("warnings")))


def shared_cell(m: dict, shared: int) -> str:
    """The leakage audit's shared-patients cell."""
    if not groups_checkable(m):
        return "not checkable: each image is its own group"
    return f"{shared} ✓" if shared == 0 else f"{shared} ✗"


def positive_fact(m: dict) -> str:
    """One line: which class is positive and how that was decided."""
    record = (m.get("classes") or {}).get("positive")
    names = class_names(m)
    if record is None:
        pos = positive_name(m)
        return (
            f"{pos} (recorded before fastall named the positive class: the second class)" if pos else "none"
        )
    if record.get("name"):
        return f"{record['name']} ({record.get('source')}); the other class: {negative_name(m)}"
    if len(names) > 2:
        return f"none: {len(names)} classes, each with its own one-vs-rest metrics"
    return record.get("message") or "none"
