"""Warnings as data: a code and a one-line text. A run's ``metrics.json`` → ``warnings`` holds them, the CLI
prints them and the report shows them in a box at the top; older runs stored bare strings (``as_records``
reads both)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Notices:
    """An ordered list of ``{"code", "text"}`` records without repeats."""

    items: list[dict[str, str]] = field(default_factory=list)

    def add(self, code: str, text: str) -> None:
        record = {"code": code, "text": " ".join(str(text).split())}
        if text and record not in self.items:
            self.items.append(record)

    def extend(self, code: str, texts: Iterable[str]) -> None:
        for text in texts:
            self.add(code, text)

    def codes(self) -> list[str]:
        return [r["code"] for r in self.items]

    def texts(self) -> list[str]:
        return [r["text"] for r in self.items]


def as_records(warnings: Iterable | None) -> list[dict[str, str]]:
    """``{"code", "text"}`` records of a metrics.json ``warnings`` list: records, or strings (``note``)."""
    out = []
    for w in warnings or []:
        if isinstance(w, dict) and "text" in w:
            out.append({"code": str(w.get("code") or "note"), "text": str(w["text"])})
        elif isinstance(w, str):
            out.append({"code": "note", "text": w})
    return out
