"""The click group: every failure becomes one line and a non-zero exit code, never a traceback."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

import click
from rich.console import Console

from fastall import __version__
from fastall.errors import FastallError
from fastall.system import faults
from fastall.system.devices import DEVICE_RULE
from fastall.system.files import describe_write_error, is_disk_full

REDIRECTED_WIDTH = 1000


def wide_console(stderr: bool = False) -> Console:
    """A rich console that never cuts a table or a number: at the terminal's width on a terminal, and wide
    enough for every table when the output goes to a file or a pipe."""
    stream = sys.stderr if stderr else sys.stdout
    tty = hasattr(stream, "isatty") and stream.isatty()
    return Console(stderr=stderr, width=None if tty else REDIRECTED_WIDTH)


console = wide_console(stderr=True)
results = wide_console()

# Options that several commands share: one declaration each.
weights_path_option = click.option(
    "--weights-path",
    default=None,
    type=click.Path(dir_okay=False, path_type=str),
    help="Backbone weights file, where the recorded one has moved.",
)
distributed_option = click.option(
    "--distributed/--no-distributed",
    default=None,
    help="Run as one rank of a torchrun job [auto: when torchrun starts more than one process].",
)
dist_timeout_option = click.option(
    "--dist-timeout",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds a rank waits for an unresponsive other rank before stopping.",
)

device_option = click.option("--device", default="auto", show_default=True, help=DEVICE_RULE)

positive_option = click.option(
    "--positive",
    default=None,
    metavar="CLASS",
    help="The positive (disease) class, by its folder name; sensitivity, specificity, PPV, NPV and sens= "
    "thresholds are of this class [recorded in the cache or run; else the one class named like a disease "
    "(all, aml, blast, leukemia, malignant, cancer, tumour, abnormal, positive); else none].",
)

patients_option = click.option(
    "--patients",
    default=None,
    type=click.Path(dir_okay=False, path_type=str),
    help="CSV with columns path,patient (paths relative to DATA): each image's patient, the unit of every "
    "split; overrides --patient-regex for the images it lists.",
)

OUT_OF_MEMORY = "out of memory: use smaller sizes (--batch-size, --hidden, --views, --image-size)"
NOTHING_KEPT = "nothing was written (outputs appear only when complete): run the command again"
INTERRUPTED = {
    "extract": "the finished batches are kept in the cache's .partial folder: run it again to resume",
    "train-head": "no run folder was written (it appears only when complete): run the command again",
    "sweep": "no sweep folder was written (it appears only when complete): run the command again",
}
_ALLOCATOR = ("DefaultCPUAllocator: can't allocate memory", "CUDA out of memory", "out of memory")


def _allocator_failure(err: BaseException) -> bool:
    """torch's allocators fail with a RuntimeError (torch.OutOfMemoryError on CUDA), not a MemoryError."""
    return isinstance(err, RuntimeError) and any(s in str(err) for s in _ALLOCATOR)


def _allocator_detail(err: BaseException) -> str:
    text = str(err)
    start = text.find("you tried to allocate ")
    if start >= 0:
        amount = text[start + len("you tried to allocate ") :].split(" bytes", 1)[0]
        if amount.isdigit():
            return f"torch tried to allocate {int(amount) / 2**30:,.1f} GiB"
    return text.splitlines()[0][:160]


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that it ends like Ctrl-C: one line saying what was kept."""


@contextlib.contextmanager
def _terminated_on_sigterm():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Terminated()

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """A library warning as one line on stderr (no source file, no code line)."""
    text = str(message).strip().splitlines()
    click.echo(f"warning: {text[0] if text else category.__name__}", err=True)


class _UserError(click.ClickException):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class FastallGroup(click.Group):
    """Turns every failure into a one-line message and a non-zero exit code; never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            with warnings.catch_warnings(), _terminated_on_sigterm():
                warnings.showwarning = _one_line_warning
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Terminated:
            raise _UserError(
                f"stopped by SIGTERM; {INTERRUPTED.get(ctx.invoked_subcommand, NOTHING_KEPT)}", 143
            ) from None
        except FastallError as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise _UserError(message, err.exit_code) from None
        except KeyboardInterrupt:
            raise _UserError(
                f"interrupted; {INTERRUPTED.get(ctx.invoked_subcommand, NOTHING_KEPT)}", 130
            ) from None
        except MemoryError:
            raise _UserError(OUT_OF_MEMORY, 1) from None
        except Exception as err:  # noqa: BLE001 - the last line of defence against tracebacks
            if _allocator_failure(err):
                raise _UserError(f"{OUT_OF_MEMORY} ({_allocator_detail(err)})", 1) from None
            if is_disk_full(err):
                where = f"{err.filename}: " if isinstance(err, OSError) and err.filename else ""
                raise _UserError(f"{where}{describe_write_error(err)}", 1) from None
            if os.environ.get("FASTALL_DEBUG"):
                raise
            first = str(err).splitlines()[0] if str(err) else ""
            raise _UserError(
                f"internal error: {type(err).__name__}: {first} (set FASTALL_DEBUG=1 for the traceback)", 1
            ) from None


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


@click.group(cls=FastallGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastall")
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=None,
    help="Largest image decoded, in pixels [$FASTALL_MAX_PIXELS or 16777216 = 4096x4096]; the decode "
    "memory budget is 16 bytes per pixel of it.",
)
@click.pass_context
def cli(ctx: click.Context, max_pixels: int | None) -> None:
    """fastall: the frozen-ResNet-50 C-NMC 2019 leukemia classifier, trained from a feature cache."""
    hook = faults.env_hook()  # fault tests only: a FASTALL_TEST_* variable names the step
    if hook is not None:
        ctx.with_resource(faults.installed(hook))
    if max_pixels is not None:
        from fastall.data import images

        ctx.with_resource(images.pixel_limit(max_pixels))
        ctx.with_resource(_exported(images.MAX_PIXELS_ENV, str(max_pixels)))


@contextlib.contextmanager
def _exported(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the command (processes it starts see it), then as before."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
