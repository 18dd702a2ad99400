"""The layout is a contract: the import-linter layer rules hold, a forbidden import breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400


def _lint(root: Path) -> subprocess.CompletedProcess:
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_layer_contracts_hold():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("fastall/training/splits.py", "import torchvision"),
        ("fastall/training/metrics.py", "from fastall.features import backbone"),
        ("fastall/data/images.py", "from fastall.inference import model"),
        ("fastall/features/cache.py", "from fastall.training import splits"),
        ("fastall/inference/predict.py", "import fastall.cli"),
        ("fastall/inference/bench.py", "import fastall.training.engine"),
        ("fastall/inference/model.py", "from fastall.inference import artifacts"),
        ("fastall/reporting/figures.py", "from fastall.training import metrics"),
    ],
)
def test_a_forbidden_import_breaks_the_contracts(tmp_path, module, forbidden):
    shutil.copytree(ROOT / "fastall", tmp_path / "fastall", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{forbidden}  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout


def test_no_module_is_over_the_size_limit():
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in (ROOT / "fastall").rglob("*.py")}
    assert {str(p): n for p, n in sizes.items() if n > MAX_MODULE_LINES} == {}
