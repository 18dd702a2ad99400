"""Reporting: what a run shows a person: terminal tables (``tables``), figures (``figures``, ``grids``) and
the self-contained HTML report (``html``, ``run_report``), made from a run folder alone.

A rendering layer below training: imports only fastall.errors, fastall.system, fastall.data (to decode the
images of the example-cell grids) and libraries (matplotlib, Jinja2, sklearn, numpy). Training and inference
call it; it never imports features, training, inference or the CLI.
"""
