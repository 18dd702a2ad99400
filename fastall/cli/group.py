"""The click group: every failure becomes one line and a non-zero exit code, never a traceback."""

from __future__ import annotations

import os

import click
from rich.console import Console

from fastall import __version__
from fastall.errors import FastallError
from fastall.system.files import describe_write_error, is_disk_full

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
            raise _UserError(
                "interrupted; completed work was kept (re-run the command to resume)", 130
            ) from None
        except MemoryError:
            raise _UserError("out of memory: use a smaller --batch-size or fewer --views", 1) from None
        except Exception as err:  # noqa: BLE001 - the last line of defence against tracebacks
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
def cli() -> None:
    """fastall: the frozen-ResNet-50 C-NMC 2019 leukemia classifier, trained from a feature cache."""
