"""`fastall evaluate`."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape

from fastall.cli.group import (
    cli,
    console,
    device_option,
    patients_option,
    positive_option,
    weights_path_option,
)
from fastall.cli.render import rich_reporter


@cli.command(name="evaluate")
@click.argument("run", type=click.Path(path_type=str))
@click.argument("data", type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Output folder.")
@click.option("--classes", default=None, help="Map DATA class names to the run's: blast=all,normal=hem.")
@click.option("--patient-regex", default=None, help="One capture group: the patient in a generic DATA tree.")
@click.option(
    "--threshold",
    default="0.5",
    show_default=True,
    help="Cut on P(the run's positive class): a number, youden or sens=0.95 (chosen on the run's own "
    "out-of-fold predictions).",
)
@positive_option
@patients_option
@device_option
@click.option("--batch-size", type=int, default=32, show_default=True)
@weights_path_option
@click.option(
    "--cache",
    default=None,
    type=click.Path(dir_okay=False, path_type=str),
    help="The run's training cache, where the recorded one has moved (for the shift summary).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--no-report", is_flag=True, help="Skip report/index.html.")
def evaluate_cmd(run: str, data: str, out: str, no_report: bool, **options: Any) -> None:
    """External validation: RUN's model on the labelled images of DATA (a dataset it never saw), with
    patient-bootstrap CIs, a threshold chosen on RUN's out-of-fold predictions, patient-level diagnosis and
    a domain-shift summary."""
    from fastall.inference.evaluate import EvaluateOptions, evaluate_run
    from fastall.inference.shift import shift_line
    from fastall.reporting.patient_text import patient_line

    ev = evaluate_run(
        run,
        data,
        out,
        EvaluateOptions(report=not no_report, **options),
        reporter=rich_reporter(console),
    )
    r = ev.result
    say = lambda text: console.print(text, highlight=False, soft_wrap=True)  # noqa: E731
    m = r["metrics"]
    pos = r.get("positive_class")
    say(
        f"{r['images']} images of {r['data']['root']} ({r['skipped']} skipped); "
        f"positive class: {pos or 'none'}"
    )
    names = (
        {"recall": f"sensitivity ({pos})", "specificity": "specificity"}
        if pos
        else {"recall": "macro recall"}
    )
    keys = ("accuracy", "recall", "specificity", "auc") if pos else ("accuracy", "recall", "auc")
    say("cells (argmax): " + ", ".join(f"{names.get(k, k)} {_f(m.get(k))}{_ci(m, k)}" for k in keys))
    t = r["threshold"]
    say(f"threshold {t['value']:.4g} ({t['rule']}); source: {t['source']}")
    if "at_threshold" in r:
        a = r["at_threshold"]
        say(
            "cells at threshold: "
            + ", ".join(f"{names.get(k, k)} {_f(a.get(k))}" for k in ("accuracy", "recall", "specificity"))
        )
    if "patient_level" in r:
        say("patients: " + patient_line(r["patient_level"]))
    if "shift" in r:
        say("domain shift: " + shift_line(r["shift"]))
        o = r["ood"]
        say(
            f"ood: {o['outside']} of {o['images']} image(s) outside the run's training-feature radius "
            "(about 1% expected for images like the training ones); column ood of predictions.csv"
        )
    for note in r["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    for warning in ev.warnings:
        console.print(f"[red]warning:[/] {warning}", highlight=False, soft_wrap=True)
    say(f"Outputs in {ev.out}" + (f"; report: {ev.report}" if ev.report else ""))


def _f(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


def _ci(m: dict, key: str) -> str:
    iv = ((m.get("ci") or {}).get("intervals") or {}).get(key)
    return f" [{iv[0]:.3f}-{iv[1]:.3f}]" if iv else ""
