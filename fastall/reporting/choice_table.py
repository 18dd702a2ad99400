"""The report's table of the default preset's probe-or-MLP choice per fold (metrics.json ``model_choice``)."""

from __future__ import annotations


def choice_table(choice: dict):
    """One row per outer fold: the model kept and why; the final head's choice in the note."""
    from fastall.reporting.html import Table

    rows = [[str(f["fold"]), f["kept"], f["why"]] for f in choice.get("folds", [])]
    note = f"{choice.get('rule', '')}. Final head: {choice.get('final', '?')}."
    return Table("model-choice", "Probe or MLP, chosen per fold", ["Fold", "Kept", "Why"], rows, note=note,
                 nav="Model choice")  # fmt: skip
