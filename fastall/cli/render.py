"""The CLI's side of ``fastall.system.events``: warnings and lines on stderr, tasks as rich progress bars."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from fastall.system.events import Event, Reporter


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "it")
        rate = f"{task.speed:,.1f}" if task.speed else "--"
        return Text(f"{rate} {unit}/s", style="progress.data.speed")


class RichSink:
    """Draws events: a ``warning`` in yellow, ``info`` as a plain line (``Hint:`` before a ``*hint`` code),
    each task as a bar (``progress``)."""

    def __init__(self, console: Console, progress: bool = True, warnings: bool = True) -> None:
        self.console, self.progress, self.warnings = console, progress, warnings
        self.bars: dict[str, tuple[Progress, Any]] = {}

    def __call__(self, event: Event) -> None:
        if event.kind == "warning" and not self.warnings:
            return
        if event.kind == "warning":
            label = "skipped:" if event.code == "skipped" else "Warning:"
            self.console.print(
                Text.assemble((label, "yellow"), " ", event.text), highlight=False, soft_wrap=True
            )
        elif event.kind == "info" and event.code == "stage":
            self.console.rule(Text(event.text, style="bold"))
        elif event.kind == "info" and (event.code or "").endswith("hint"):
            self.console.print(
                Text.assemble(("Hint:", "cyan"), " ", event.text), highlight=False, soft_wrap=True
            )
        elif event.kind == "info":
            self.console.print(event.text, highlight=False, soft_wrap=True, markup=False)
        elif not self.progress:
            return
        elif event.kind == "start":
            self._start(event)
        elif event.kind == "advance" and event.task in self.bars:
            bar, task = self.bars[event.task]
            update = {"completed": event.done, "total": event.total}
            if "description" in event.fields:
                update["description"] = event.fields["description"]
            bar.update(task, **update)
        elif event.kind == "end" and event.task in self.bars:
            bar, _ = self.bars.pop(event.task)
            bar.__exit__(None, None, None)

    def _start(self, event: Event) -> None:
        transient = bool(event.fields.get("transient", False))
        columns = [TextColumn(f"[bold]{event.fields.get('description', event.task)}"), BarColumn()]
        columns += [MofNCompleteColumn(), _Rate(), TimeElapsedColumn()]
        if event.fields.get("eta", True):
            columns += [TextColumn("ETA"), TimeRemainingColumn()]
        bar = Progress(*columns, console=self.console, transient=transient)
        bar.__enter__()
        task = bar.add_task(event.task, total=event.total, unit=event.fields.get("unit", "it"))
        self.bars[event.task] = (bar, task)


def rich_reporter(console: Console, progress: bool = True, warnings: bool = True) -> Reporter:
    """The reporter every CLI command hands to the library (``warnings=False``: the command prints the
    warnings itself, from the records, in its summary)."""
    return Reporter(RichSink(console, progress, warnings))
