"""The `fastall` command line: a thin click layer over the library functions."""

from __future__ import annotations

import os
import sys

import click
from rich.console import Console

from fastall import __version__
from fastall.errors import FastallError

console = Console(stderr=True)


class _UserError(click.ClickException):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class FastallGroup(click.Group):
    """Turns every failure into a one-line message and a non-zero exit code; never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except FastallError as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise _UserError(message, err.exit_code) from None
        except KeyboardInterrupt:
            raise _UserError("interrupted; completed work was kept (re-run the command to resume)",
                             130) from None
        except MemoryError:
            raise _UserError("out of memory: use a smaller --batch-size or fewer --views", 1) from None
        except Exception as err:  # noqa: BLE001 - the last line of defence against tracebacks
            if os.environ.get("FASTALL_DEBUG"):
                raise
            first = str(err).splitlines()[0] if str(err) else ""
            raise _UserError(f"internal error: {type(err).__name__}: {first} "
                             "(set FASTALL_DEBUG=1 for the traceback)", 1) from None


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


@click.group(cls=FastallGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastall")
def cli() -> None:
    """fastall: the frozen-ResNet-50 C-NMC 2019 leukemia classifier, trained from a feature cache."""


# ---- data (issue: foundation) ----------------------------------------------------------------------------

@cli.command()
@click.argument("data", type=click.Path(file_okay=False, path_type=str))
@click.option("--patient-regex", default=None, help="Regex with one group that extracts the patient ID.")
@click.option("--include", default="prelim", show_default=True, help="Optional sources: prelim,testing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def scan(data: str, patient_regex: str | None, include: str, as_json: bool) -> None:
    """Count images and patients per class and source, and list every problem found."""
    import json

    from rich.markup import escape
    from rich.table import Table

    from fastall.data import discover

    ds = discover(data, patient_regex=patient_regex, include=_csv(include))
    summary = ds.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        out, names = Console(), summary["class_names"]
        table = Table(title=escape(f"{summary['root']} ({summary['layout']} layout)"))
        table.add_column("source")
        for c in names:
            table.add_column(f"{escape(c)} images", justify="right")
            table.add_column(f"{escape(c)} patients", justify="right")
        table.add_column("unlabelled", justify="right")
        for source, row in summary["per_source"].items():
            cells = [str(row[key][c]) for c in names for key in ("per_class", "patients_per_class")]
            table.add_row(escape(source), *cells, str(row["unlabelled"]))
        per_class = summary["per_class"]
        cells = [str(per_class[c][key]) for c in names for key in ("images", "patients")]
        table.add_row("[bold]total", *cells, str(summary["unlabelled_images"]))
        out.print(table)
        balance = ", ".join(f"{escape(c)} (label {v['label']}) {v['fraction']:.1%}"
                            for c, v in per_class.items())
        out.print(f"{summary['labelled_images']} labelled images of {summary['patients']} patients; "
                  f"balance: {balance}")
        for warning in summary["warnings"]:
            out.print(f"[yellow]warning:[/] {escape(warning)}")
        if ds.problems:
            shown = 50
            problems = Table(title=f"{len(ds.problems)} problem(s), {summary['fatal_problems']} fatal")
            problems.add_column("file", overflow="fold")
            problems.add_column("problem", overflow="fold")
            problems.add_column("fatal")
            for p in ds.problems[:shown]:
                problems.add_row(escape(p.path), escape(p.message), "[red]yes" if p.fatal else "no")
            out.print(problems)
            if len(ds.problems) > shown:
                out.print(f"... and {len(ds.problems) - shown} more (--json lists them all)")
    ds.check(training=False)


@cli.command()
@click.argument("out", type=click.Path(path_type=str))
@click.option("--patients-per-class", type=int, default=None)
@click.option("--images-per-patient", type=int, default=None)
@click.option("--size", type=int, default=450, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--testing", is_flag=True, help="Also write unlabelled testing_data.")
@click.option("--like-manifest", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--max-per-patient", type=int, default=None)
def synth(out: str, patients_per_class: int | None, images_per_patient: int | None, size: int, seed: int,
          testing: bool, like_manifest: str | None, max_per_patient: int | None) -> None:
    """Write a deterministic synthetic dataset in the C-NMC 2019 tree layout."""
    from fastall.synth import synthesize

    counts = {key: value for key, value in (("patients_per_class", patients_per_class),
                                            ("images_per_patient", images_per_patient)) if value is not None}
    summary = synthesize(out, size=size, seed=seed, testing=testing, like_manifest=like_manifest,
                         max_per_patient=max_per_patient, progress=True, **counts)
    per = ", ".join(f"{s} {n['all']} all / {n['hem']} hem" for s, n in summary.per_source.items())
    click.echo(f"wrote {summary.images} images of {summary.patients} patients ({per}) to {summary.root} "
               f"in {summary.seconds:.1f} s")


# ---- extract (issue 3) -----------------------------------------------------------------------------------

@cli.command()
@click.argument("data", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str), help="Cache file.")
@click.option("--views", type=int, default=8, show_default=True, help="View 0 plain, views 1.. augmented.")
@click.option("--image-size", type=int, default=224, show_default=True, help="Whole-image resize (no crop).")
@click.option("--weights", default="imagenet1k_v1", show_default=True,
              help="imagenet1k_v1, imagenet1k_v2, a .pth state dict, or none (random init, tests only).")
@click.option("--device", default="auto", show_default=True, help="auto, cuda or cpu.")
@click.option("--amp/--no-amp", default=True, show_default=True, help="Mixed precision (autocast).")
@click.option("--amp-dtype", type=click.Choice(["bf16", "fp16"]), default="bf16", show_default=True)
@click.option("--batch-size", type=int, default=None, help="Images per forward [256 on GPU, 32 on CPU].")
@click.option("--workers", type=int, default=None, help="Decoding processes [up to 10 on GPU, 0 on CPU].")
@click.option("--seed", type=int, default=0, show_default=True, help="Augmentation (and random-init) seed.")
@click.option("--include", default=None, help="Optional sources, e.g. prelim,testing [prelim].")
@click.option("--overwrite", is_flag=True, help="Replace a cache or partial work made with other settings.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images (listed in the cache), don't stop.")
@click.option("--patient-regex", default=None, help="Regex with one group that extracts the patient ID.")
def extract(data: str, out: str, views: int, image_size: int, weights: str, device: str, amp: bool,
            amp_dtype: str, batch_size: int | None, workers: int | None, seed: int, include: str | None,
            overwrite: bool, skip_bad: bool, patient_regex: str | None) -> None:
    """Compute frozen ResNet-50 features of V views per image into a crash-safe, resumable HDF5 cache."""
    from fastall.extract import describe
    from fastall.extract import extract as run_extract

    summary = run_extract(data, out, views=views, image_size=image_size, weights=weights, device=device,
                          amp=amp, amp_dtype=amp_dtype, batch_size=batch_size, workers=workers, seed=seed,
                          include=_csv(include), overwrite=overwrite, skip_bad=skip_bad,
                          patient_regex=patient_regex, progress=True,
                          warn=lambda msg: console.print(f"[yellow]Warning:[/] {msg}", highlight=False,
                                                         soft_wrap=True))
    for line in describe(summary):
        click.echo(line)


# ---- end-to-end model: verify, bench, predict, export (issue 5) --------------------------------------------

@cli.command()
@click.argument("run", type=click.Path(path_type=str))
@click.option("--images", type=int, default=32, show_default=True, help="Images to check (both classes).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--cache", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="The run's feature cache [the one recorded in head.pt].")
@click.option("--data", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Data root of the original images [the one recorded in the cache].")
@click.option("--weights-path", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Backbone weights file, where the recorded one has moved.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "int8"]), default="fp32",
              show_default=True, help="Also check this faster precision against fp32 (≥ 99.5% agreement).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify(run: str, images: int, device: str, cache: str | None, data: str | None, weights_path: str | None,
           precision: str, as_json: bool) -> None:
    """Prove the end-to-end model on the original images gives the cached path's answers; exit 1 if not."""
    import json

    from fastall.verify import render, verify_run

    report = verify_run(run, images=images, device=device, cache=cache, data=data, weights_path=weights_path,
                        precision=precision)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        Console().print(render(report))
        for note in report.notes:
            click.echo(f"note: {note}")
    if not report.passed:
        raise FastallError(f"verify failed: {', '.join(c.name for c in report.checks if not c.passed)} "
                           "outside tolerance (wrong head, weights or preprocessing?)")
    if not as_json:
        click.echo("verify passed")


@cli.command()
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--batch-sizes", default="1,8,32,256", show_default=True, help="Throughput batch sizes.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "int8"]), default="fp32",
              show_default=True, help="int8: CPU only, calibrated on the benchmark images.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch [all cores].")
@click.option("--run", default=None, type=click.Path(path_type=str),
              help="A trained run [a random-init backbone and a random head, timing only].")
@click.option("--images", type=int, default=32, show_default=True, help="Synthetic 450x450 BMP files.")
@click.option("--image-size", type=int, default=224, show_default=True, help="Without --run.")
@click.option("--iters", type=int, default=30, show_default=True, help="Timed batch-1 calls.")
@click.option("--workers", type=int, default=None, help="Decoding processes [0 on CPU, most cores on GPU].")
@click.option("--backend", type=click.Choice(["auto", "eager", "jit", "compile"]), default="auto",
              show_default=True, help="CPU: jit (TorchScript freeze, oneDNN fusion; auto), compile "
                                      "(torch.compile, inductor) or eager.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench(device: str, batch_sizes: str, precision: str, threads: int | None, run: str | None, images: int,
          image_size: int, iters: int, workers: int | None, backend: str, as_json: bool) -> None:
    """Latency (p50/p90/p99, batch 1) and throughput, end-to-end from files and model-only."""
    import json

    from fastall.bench import render, run_bench

    try:
        sizes = [int(v) for v in _csv(batch_sizes)]
    except ValueError:
        raise FastallError(f"--batch-sizes must be comma-separated integers, got {batch_sizes!r}") from None
    if not sizes or min(sizes) < 1 or images < 1 or iters < 1:
        raise FastallError("--batch-sizes, --images and --iters must be positive")
    result = run_bench(device=device, batch_sizes=sizes, precision=precision, threads=threads, run=run,
                       images=images, image_size=image_size, iters=iters, workers=workers, backend=backend,
                       log=lambda msg: console.print(f"[dim]{msg}[/]", highlight=False))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    out = Console()
    for table in render(result):
        out.print(table)
    if result["agreement_vs_fp32"]:
        a = result["agreement_vs_fp32"]
        out.print(f"{a['precision']} agrees with fp32 on {a['agreement']:.1%} of {a['images']} images "
                  f"(max |Δprob| {a['max_dprob']:.3g})")


@cli.command()
@click.argument("run", type=click.Path(path_type=str))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str), help="Predictions CSV.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--tta", type=int, default=1, is_flag=False, flag_value=8, show_default=True,
              help="Average N views (view 0 plain, views 1.. augmented); --tta alone: 8.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "int8"]), default=None,
              help="[the model's: an export's chosen precision, fp32 for a run] int8 on a run is "
                   "calibrated on the run's own images.")
@click.option("--backend", type=click.Choice(["auto", "eager", "jit", "compile"]), default="auto",
              show_default=True, help="CPU: jit (TorchScript, oneDNN fusion), compile (torch.compile; "
                                      "slow start, fastest bf16) or eager.")
@click.option("--skip-bad/--no-skip-bad", default=True, show_default=True,
              help="Report and skip unreadable files (listed in <out>.skipped.csv), or stop at the first.")
@click.option("--workers", type=int, default=None, help="Decoding processes [0 on CPU, most cores on GPU].")
@click.option("--weights-path", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Backbone weights file, where the recorded one has moved.")
def predict(run: str, paths: tuple[str, ...], out: str, device: str, batch_size: int, tta: int,
            precision: str | None, backend: str, skip_bad: bool, workers: int | None,
            weights_path: str | None) -> None:
    """A probability and a label per image (files, or folders searched recursively); RUN or model.pt."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from rich.text import Text

    from fastall.deploy import load_for_inference
    from fastall.predict import predict_paths, write_predictions

    model = load_for_inference(run, device=device, precision=precision, backend=backend,
                               weights_path=weights_path)
    with Progress("[bold]predict", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as bar:
        task = bar.add_task("predict", total=None)
        preds = predict_paths(model, paths, batch_size=batch_size, tta=tta, skip_bad=skip_bad,
                              workers=workers,
                              on_problem=lambda msg: bar.console.print(
                                  Text.assemble(("skipped: ", "yellow"), msg), soft_wrap=True),
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
    sidecar = write_predictions(preds, out)
    counts = {c: preds.labels.count(c) for c in preds.class_names}
    click.echo(f"{len(preds.paths)} images -> {out} ({', '.join(f'{n} {c}' for c, n in counts.items())}; "
               f"{preds.precision}, {preds.views} view{'s' if preds.views > 1 else ''})")
    if preds.skipped:
        click.echo(f"{len(preds.skipped)} unreadable files skipped, listed in {sidecar}")


@cli.command(name="export")
@click.argument("run", type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str), help="Model file.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]), default="auto",
              show_default=True, help="CPU precision of the deployed model; auto: the fastest that agrees "
                                      "with fp32 on >= 99.5% of the run's images (int8, bf16, else fp32).")
@click.option("--images", type=int, default=200, show_default=True,
              help="Run images the precision is checked on.")
@click.option("--data", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Data root of the run's images [the one recorded in the cache].")
@click.option("--weights-path", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Backbone weights file, where the recorded one has moved.")
def export_cmd(run: str, out: str, precision: str, images: int, data: str | None,
               weights_path: str | None) -> None:
    """Write one self-contained model file (torch.load(weights_only=True)) for deployment."""
    from fastall.deploy import export_deployable

    path, choice = export_deployable(run, out, precision=precision, images=images, data=data,
                                     weights_path=weights_path,
                                     log=lambda msg: console.print(msg, highlight=False, soft_wrap=True))
    n = choice["images"]
    checked = f", {choice['agreement']:.1%} agreement on {n} images" if n else ""
    size = path.stat().st_size / 1e6
    click.echo(f"exported {run} -> {path} ({size:.1f} MB, {choice['precision']}{checked})")


# ---- train-head (issue 4) -------------------------------------------------------------------------------

@cli.command(name="train-head")
@click.argument("cache", type=click.Path(dir_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Run folder.")
@click.option("--folds", type=int, default=5, show_default=True, help="Patient-level CV folds.")
@click.option("--test", type=click.Choice(["holdout", "prelim", "none"]), default="holdout",
              show_default=True, help="Test set: whole patients held out, the C-NMC prelim set, or none.")
@click.option("--holdout", type=float, default=0.1, show_default=True, help="Fraction of images held out.")
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Adam learning rate.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True, help="Adam L2 weight decay.")
@click.option("--dropout", type=float, default=0.5, show_default=True)
@click.option("--hidden", type=int, default=512, show_default=True)
@click.option("--patience", type=int, default=None, help="Early stopping on validation loss (best kept).")
@click.option("--plateau-factor", type=float, default=0.1, show_default=True, help="ReduceLROnPlateau factor")
@click.option("--plateau-patience", type=int, default=2, show_default=True, help="ReduceLROnPlateau patience")
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), default="none", show_default=True)
@click.option("--standardize/--no-standardize", default=True, show_default=True,
              help="Standardise features with training-fold statistics (stored in the head).")
@click.option("--tta/--no-tta", default=False, show_default=True, help="Also report mean-over-views metrics.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
def train_head_cmd(cache: str, out: str, folds: int, test: str, holdout: float, epochs: int, batch_size: int,
                   lr: float, weight_decay: float, dropout: float, hidden: int, patience: int | None,
                   plateau_factor: float, plateau_patience: int, class_weight: str, standardize: bool,
                   tta: bool, seed: int, device: str, overwrite: bool) -> None:
    """Patient-level k-fold CV of the head from the feature cache, with test metrics, in seconds."""
    from fastall.train import print_run_summary, train_head

    result = train_head(cache, out, folds=folds, test=test, holdout=holdout, epochs=epochs,
                        batch_size=batch_size, lr=lr, weight_decay=weight_decay, dropout=dropout,
                        hidden=hidden, patience=patience, plateau_factor=plateau_factor,
                        plateau_patience=plateau_patience, class_weight=class_weight, standardize=standardize,
                        tta=tta, seed=seed, device=device, overwrite=overwrite, console=console)
    print_run_summary(result, console)


# ---- demo (issue 4) ---------------------------------------------------------------------------------------

@cli.command()
@click.option("--out", default="fastall-demo", show_default=True,
              type=click.Path(file_okay=False, path_type=str),
              help="Folder for the synthetic data, the cache and the run.")
@click.option("--device", default="auto", show_default=True, help="auto, cuda or cpu.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out: str, device: str, seed: int) -> None:
    """synth -> extract -> train-head --folds 5 on built-in synthetic data, then the summary table."""
    from fastall.demo import run_demo

    run_demo(out, device=device, seed=seed, console=console)


# ---- sweep (issue 6) ------------------------------------------------------------------------------------

@cli.command(name="sweep")
@click.argument("cache", type=click.Path(dir_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Sweep folder.")
@click.option("--grid", default=None,
              help="name=v1,v2 ... (full product); with --random, name=low:high ranges too. "
                   "Names: lr weight_decay dropout hidden epochs batch_size patience plateau_factor "
                   "plateau_patience class_weight standardize.")
@click.option("--random", "random_n", type=int, default=None, help="Sample N configurations from the grid.")
@click.option("--folds", type=int, default=5, show_default=True, help="Patient-level CV folds.")
@click.option("--metric", type=click.Choice(["auc", "accuracy", "f1"]), default="auc", show_default=True)
@click.option("--test", type=click.Choice(["holdout", "prelim", "none"]), default="holdout",
              show_default=True, help="Test set left out of the sweep (as in train-head).")
@click.option("--holdout", type=float, default=0.1, show_default=True, help="Fraction of images held out.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing sweep folder.")
def sweep_cmd(cache: str, out: str, grid: str | None, random_n: int | None, folds: int, metric: str,
              test: str, holdout: float, seed: int, device: str, overwrite: bool) -> None:
    """Train many head configurations on the same patient-level folds at once, ranked by a metric."""
    from fastall.sweep import print_sweep, sweep

    result = sweep(cache, out, grid=grid, random=random_n, folds=folds, metric=metric, test=test,
                   holdout=holdout, seed=seed, device=device, overwrite=overwrite, console=console)
    print_sweep(result, console)


def main() -> None:
    cli.main(prog_name="fastall")


if __name__ == "__main__":
    sys.exit(main())
