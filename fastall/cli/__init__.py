"""The `fastall` command line: a thin click layer over the library functions, one module per stage."""

from __future__ import annotations

import os
import sys

from fastall.system import openmp

openmp.prefer_passive()  # before any command module imports torch
# OpenCV (under pytorch-grad-cam) logs from C++, not through warnings: errors only.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

from fastall.cli import (  # noqa: E402, F401  (registers the commands; after the OpenMP policy)
    cells,
    compare,
    data,
    demo,
    evaluate,
    explain,
    export,
    features,
    finetune,
    inference,
    probe,
    report,
    training,
)
from fastall.cli.group import cli  # noqa: E402

__all__ = ["cli", "main"]


def main() -> None:
    cli.main(prog_name="fastall")


if __name__ == "__main__":
    sys.exit(main())
