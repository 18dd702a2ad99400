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
            raise _UserError(str(err).splitlines()[0] if str(err) else type(err).__name__, err.exit_code) from None
        except KeyboardInterrupt:
            raise _UserError("interrupted; completed work was kept (re-run the command to resume)", 130) from None
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
    """fastall: the frozen-ResNet-50 C-NMC 2019 leukemia classifier, trained from a feature cache in seconds."""


# ---- data (issue: foundation) ----------------------------------------------------------------------------

@cli.command()
@click.argument("data", type=click.Path(file_okay=False, path_type=str))
@click.option("--patient-regex", default=None, help="Regex with one group that extracts the patient ID.")
@click.option("--include", default="prelim", show_default=True, help="Optional sources: prelim,testing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def scan(data: str, patient_regex: str | None, include: str, as_json: bool) -> None:
    """Count images and patients per class and source, and list every problem found."""
    raise FastallError("scan: not implemented yet")


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
    raise FastallError("synth: not implemented yet")


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
@click.option("--workers", type=int, default=None, help="Decoding processes [cores - 2 on GPU, 1 on CPU].")
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
                          warn=lambda msg: console.print(f"[yellow]Warning:[/] {msg}", highlight=False))
    for line in describe(summary):
        click.echo(line)


def main() -> None:
    cli.main(prog_name="fastall")


if __name__ == "__main__":
    sys.exit(main())
