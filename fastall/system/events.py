"""How the library speaks: one small event protocol.

Library code never prints, never builds a progress bar and never holds a rich ``Console``. It is given a
``Reporter`` (or builds the silent default) and calls:

- ``reporter.warn(code, text)``: a warning record ``{"code", "text"}``; the reporter keeps each one, in
  order, without repeats (``reporter.warnings``), so a notebook gets them as data;
- ``reporter.info(text, code="info")``: a line for the user (a summary, a hint, where a file went);
- ``with reporter.task(name, total) as advance: advance(n)``: progress over ``total`` units; the CLI
  renders it as a bar, the silent reporter ignores it; ``advance(n, **fields)`` may carry a description.

Each call becomes an ``Event`` handed to ``sink`` (when one is given): the CLI's renderer
(``fastall.cli.render``) draws them with rich; a test or notebook passes ``events.append``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastall.system.notices import Notices


@dataclass(frozen=True)
class Event:
    """One thing the library says. ``kind``: ``warning``, ``info``, ``start``, ``advance`` or ``end``."""

    kind: str
    code: str = ""
    text: str = ""
    task: str = ""
    done: int = 0
    total: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)


Sink = Callable[[Event], None]


class Reporter:
    """Collects warnings as records and forwards every event to ``sink`` (nothing, by default)."""

    def __init__(self, sink: Sink | None = None) -> None:
        self.sink = sink
        self.notices = Notices()

    @property
    def warnings(self) -> list[dict[str, str]]:
        return self.notices.items

    def emit(self, event: Event) -> None:
        if self.sink is not None:
            self.sink(event)

    def warn(self, code: str, text: str) -> None:
        """Record a warning (once per identical record) and emit it."""
        before = len(self.notices.items)
        self.notices.add(code, text)
        if len(self.notices.items) > before:
            self.emit(Event("warning", code=code, text=self.notices.items[-1]["text"]))

    def info(self, text: str, code: str = "info") -> None:
        self.emit(Event("info", code=code, text=text))

    @contextmanager
    def task(self, name: str, total: int | None, **fields: Any) -> Iterator[Callable[..., None]]:
        """Progress over ``total`` units; yields ``advance(n=1, **fields)``."""
        done = 0
        self.emit(Event("start", task=name, total=total, fields=fields))

        def advance(n: int = 1, **update: Any) -> None:
            nonlocal done
            done += n
            self.emit(Event("advance", task=name, done=done, total=update.pop("total", total), fields=update))

        try:
            yield advance
        finally:
            self.emit(Event("end", task=name, done=done, total=total))


def silent() -> Reporter:
    """A reporter that keeps warnings and says nothing."""
    return Reporter()


def collecting() -> tuple[Reporter, list[Event]]:
    """A reporter whose events land in the returned list (for tests and notebooks)."""
    events: list[Event] = []
    return Reporter(events.append), events
