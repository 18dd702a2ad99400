"""`fastall extract`: its options are generated from ``ExtractConfig``'s declarations."""

from __future__ import annotations

from typing import Any

import click

from fastall.cli.group import (
    cli,
    console,
    device_option,
    dist_timeout_option,
    distributed_option,
    patients_option,
    positive_option,
)
from fastall.cli.options import apply, config_options
from fastall.features.extract_config import ExtractConfig

SHARED = {"device": device_option, "patients": patients_option, "positive": positive_option}


@cli.command()
@click.argument("data", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str), help="Cache file.")
@apply(*config_options(ExtractConfig, SHARED), distributed_option, dist_timeout_option)
def extract(data: str, out: str, distributed: bool | None, dist_timeout: float, **settings: Any) -> None:
    """Compute frozen backbone features of V views per image into a crash-safe, resumable HDF5 cache.

    Under `torchrun --nproc_per_node N -m fastall extract ...` every process extracts a share and rank 0
    writes the one cache (docs/scale.md).
    """
    from fastall.cli.render import rich_reporter
    from fastall.features.extract import extract as run_extract
    from fastall.features.ranks import Share
    from fastall.features.summary import describe
    from fastall.system.distributed import detect

    env = detect(distributed)
    config = ExtractConfig.of(**settings)
    share = Share(env, dist_timeout) if env is not None else None
    summary = run_extract(data, out, config, reporter=rich_reporter(console), share=share)
    if env is None or env.is_main:
        for line in describe(summary):
            click.echo(line)
