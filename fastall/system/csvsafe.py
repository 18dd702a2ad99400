"""The one CSV writer and reader of fastall: spreadsheet-safe text cells, read back losslessly.

A text cell starting with ``= + - @``, a tab or a carriage return is a formula to Excel, LibreOffice and
Google Sheets (a class folder named ``=HYPERLINK(...)`` would become a live link in every CSV). Every CSV
fastall writes goes through :func:`dict_writer` or :func:`writer`, which prefix such a cell with ``'`` (what
spreadsheet-safe writers do: the cell shows as text). A cell that already starts with ``'`` gets one more,
so :func:`dict_reader` can strip exactly one and give back the original text. Numbers (cells that parse as
a float, such as ``-0.25``) are left as they are.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

from fastall.system.files import open_regular

TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "'")


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def cell(value: Any) -> Any:
    """``value`` made spreadsheet-safe (text only; see the module)."""
    if isinstance(value, str) and value.startswith(TRIGGERS) and not _number(value):
        return "'" + value
    return value


def uncell(value: Any) -> Any:
    """The text :func:`cell` was given."""
    if isinstance(value, str) and value.startswith("'") and value[1:].startswith(TRIGGERS):
        return value[1:]
    return value


class _Writer:
    def __init__(self, fh: Any, **kw: Any) -> None:
        self._w = csv.writer(fh, **kw)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._w.writerow([cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


class _DictWriter(csv.DictWriter):
    def writerow(self, rowdict: dict) -> Any:
        return super().writerow({k: cell(v) for k, v in rowdict.items()})

    def writerows(self, rowdicts: Iterable[dict]) -> None:
        for row in rowdicts:
            self.writerow(row)

    def writeheader(self) -> Any:
        return self.writer.writerow([cell(f) for f in self.fieldnames])


class _DictReader(csv.DictReader):
    @property
    def fieldnames(self) -> Any:
        names = csv.DictReader.fieldnames.fget(self)
        return None if names is None else [uncell(n) for n in names]

    @fieldnames.setter
    def fieldnames(self, value: Any) -> None:
        self._fieldnames = value

    def __next__(self) -> dict:
        return {k: uncell(v) for k, v in super().__next__().items()}


def writer(fh: Any, **kw: Any) -> _Writer:
    """``csv.writer`` with spreadsheet-safe text cells."""
    return _Writer(fh, **kw)


def dict_writer(fh: Any, fieldnames: Any, **kw: Any) -> csv.DictWriter:
    """``csv.DictWriter`` with spreadsheet-safe text cells (the header too)."""
    return _DictWriter(fh, fieldnames, **kw)


def dict_reader(fh: Any, **kw: Any) -> csv.DictReader:
    """``csv.DictReader`` giving back the text :func:`dict_writer` was given."""
    return _DictReader(fh, **kw)


class MissingColumns(ValueError):
    """A CSV without a column it needs: ``missing`` and the ``columns`` it has."""

    def __init__(self, missing: list[str], columns: list[str]) -> None:
        self.missing, self.columns = missing, columns
        super().__init__(f"lacks column(s) {', '.join(missing)} (has: {', '.join(columns) or 'none'})")


def read_table(path: Any, required: Iterable[str]) -> list[dict[str, str]]:
    """The rows of a user's CSV (UTF-8, a BOM allowed, read as written: no cell is unquoted), header names
    and cells stripped; opened without blocking on a FIFO. :class:`MissingColumns` when a ``required``
    column is absent; ``OSError``, ``UnicodeDecodeError`` and ``csv.Error`` as they come."""
    with io.TextIOWrapper(open_regular(path), newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in required if c not in columns]
        if missing:
            raise MissingColumns(missing, columns)
        return [
            {(k or "").strip(): v.strip() if isinstance(v, str) else "" for k, v in row.items()}
            for row in reader
        ]
