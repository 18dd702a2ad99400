"""The `fastall` command line: a thin click layer over the library functions, one module per stage."""

from __future__ import annotations

import os
import sys

# OpenCV (under pytorch-grad-cam) logs from C++, not through warnings: errors only.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

from fastall.cli import (  # noqa: F401  (registers the commands)
    compare,
    data,
    demo,
    evaluate,
    explain,
    export,
    features,
    inference,
    probe,
    report,
    training,
)
from fastall.cli.group import cli
from fastall.system import faults

__all__ = ["cli", "main"]


def main() -> None:
    faults.install(faults.env_hook())
    cli.main(prog_name="fastall")


if __name__ == "__main__":
    sys.exit(main())
