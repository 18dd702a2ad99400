"""The end-to-end model: `fastall verify`, `bench`, `predict` and `export`."""

from __future__ import annotations

from typing import Any

import click

from fastall.cli.group import (
    cli,
    console,
    device_option,
    dist_timeout_option,
    distributed_option,
    weights_path_option,
    wide_console,
)
from fastall.cli.options import apply, config_options
from fastall.cli.render import rich_reporter
from fastall.errors import FastallError
from fastall.inference.bench_config import BenchConfig


@cli.command()
@click.argument("run", type=click.Path(path_type=str))
@click.option(
    "--images",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Images to check (both classes).",
)
@device_option
@click.option(
    "--cache",
    default=None,
    type=click.Path(dir_okay=False, path_type=str),
    help="The run's feature cache [the one recorded in head.pt].",
)
@click.option(
    "--data",
    default=None,
    type=click.Path(file_okay=False, path_type=str),
    help="Data root of the original images [the one recorded in the cache].",
)
@weights_path_option
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]),
    default="fp32",
    show_default=True,
    help="Also check this faster precision against fp32 (≥ 99.5% agreement); auto: bf16 where native.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify(
    run: str,
    images: int,
    device: str,
    cache: str | None,
    data: str | None,
    weights_path: str | None,
    precision: str,
    as_json: bool,
) -> None:
    """Prove the end-to-end model on the original images gives the cached path's answers; exit 1 if not."""
    import json

    from fastall.inference.verify import render, verify_run

    report = verify_run(
        run,
        images=images,
        device=device,
        cache=cache,
        data=data,
        weights_path=weights_path,
        precision=precision,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        wide_console().print(render(report))
        for note in report.notes:
            click.echo(f"note: {note}")
    if not report.passed:
        raise FastallError(
            f"verify failed: {', '.join(c.name for c in report.checks if not c.passed)} "
            "outside tolerance (wrong head, weights or preprocessing?)"
        )
    if not as_json:
        click.echo("verify passed")


@cli.command()
@apply(
    *config_options(BenchConfig, {"device": device_option}),
    click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
)
def bench(as_json: bool, **settings: Any) -> None:
    """Latency (p50/p90/p99, batch 1) and throughput, end-to-end from files and model-only."""
    import json

    from fastall.cli.render import rich_reporter
    from fastall.inference.bench import render, run_bench

    result = run_bench(BenchConfig.of(**settings), reporter=rich_reporter(console))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    out = wide_console()
    for table in render(result):
        out.print(table)
    if result["agreement_vs_fp32"]:
        a = result["agreement_vs_fp32"]
        out.print(
            f"{a['precision']} agrees with fp32 on {a['agreement']:.1%} of {a['images']} images "
            f"(max |Δprob| {a['max_dprob']:.3g})"
        )
    if result["onnx"]:
        a = result["onnx"]["agreement_vs_fp32"]
        out.print(f"onnxruntime agrees with PyTorch fp32 on {a['agreement']:.1%} of {a['images']} images")


@cli.command()
@click.argument("run", type=click.Path(path_type=str))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str), help="Predictions CSV.")
@device_option
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option(
    "--tta",
    type=click.IntRange(1, 64),
    default=1,
    is_flag=False,
    flag_value=8,
    show_default=True,
    help="Average N views (view 0 plain, views 1.. augmented); --tta alone: 8.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]),
    default=None,
    help="[the model's: an export's chosen precision, fp32 for a run] int8 on a run is "
    "calibrated on the run's own images.",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "eager", "jit", "compile"]),
    default="auto",
    show_default=True,
    help="CPU: jit (TorchScript, oneDNN fusion), compile (torch.compile; slow start, fastest bf16) or eager.",
)
@click.option(
    "--skip-bad/--no-skip-bad",
    default=True,
    show_default=True,
    help="Report and skip unreadable files (listed in <out>.skipped.csv), or stop at the first.",
)
@click.option("--workers", type=int, default=None, help="Decoding processes [0 on CPU, most cores on GPU].")
@weights_path_option
@distributed_option
@dist_timeout_option
def predict(
    run: str,
    paths: tuple[str, ...],
    out: str,
    device: str,
    precision: str | None,
    backend: str,
    weights_path: str | None,
    distributed: bool | None,
    dist_timeout: float,
    **batching: Any,
) -> None:
    """A probability and a label per image (files, or folders searched recursively); RUN or model.pt.

    Under `torchrun --nproc_per_node N -m fastall predict ...` every process predicts a share of the files
    and rank 0 writes the one CSV.
    """

    from fastall.inference.artifacts import load_for_inference
    from fastall.inference.ood import ood_line, training_radius
    from fastall.inference.predict import check_out, predict_paths, write_predictions
    from fastall.system.distributed import detect

    check_out(out, [run, *paths])
    env = detect(distributed)

    def load(on: Any) -> Any:
        return load_for_inference(
            run, device=on, precision=precision, backend=backend, weights_path=weights_path
        )

    model = load(device) if env is None else None
    radius, why = training_radius(run)
    options = dict(
        **batching,  # batch_size, tta, skip_bad, workers
        reporter=rich_reporter(console, progress=env is None or env.is_main),
        radius=radius,
    )
    if env is None:
        preds = predict_paths(model, paths, **options)
    else:
        from fastall.inference.sharded import predict_distributed

        preds = predict_distributed(env, load, paths, out, device=device, timeout=dist_timeout, **options)
    if preds is None:
        return
    sidecar = write_predictions(preds, out)
    counts = {c: preds.labels.count(c) for c in preds.class_names}
    click.echo(
        f"{len(preds.paths)} images -> {out} ({', '.join(f'{n} {c}' for c, n in counts.items())}; "
        f"{preds.precision}, {preds.views} view{'s' if preds.views > 1 else ''})"
    )
    if preds.skipped:
        click.echo(f"{len(preds.skipped)} unreadable files skipped, listed in {sidecar}")
    click.echo(ood_line(preds.ood) if preds.ood is not None else f"note: {why}")
