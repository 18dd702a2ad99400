"""The layout is a contract: the import-linter layer rules hold, a forbidden import breaks them."""

from __future__ import annotations

import ast
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


MAX_PARAMETERS = 12


def _parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Every declared parameter (``self`` and ``cls`` included; ``*args`` and ``**kwargs`` count one each)."""
    a = fn.args
    return (
        len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
    )


def _over_the_limit(root: Path) -> dict[str, int]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and _parameters(node) > MAX_PARAMETERS
            ):
                found[f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"] = _parameters(node)
    return found


def test_no_function_takes_more_than_twelve_parameters():
    """Settings travel as one config object (HeadConfig, ExtractConfig, BenchConfig, SynthConfig, ...)."""
    assert _over_the_limit(ROOT / "fastall") == {}


def test_the_parameter_count_sees_every_kind_of_parameter(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "m.py").write_text(
        "def ok(a, b, c, d, e, f, g, h, i, j, k, l): pass\n"
        "class C:\n    def too_many(self, a, /, b, c, d, e, f, *g, h, i, j, k, **l): pass\n"
        "async def also(a, b, c, d, e, f, g, h, i, j, k, *, l, m): pass\n"
    )
    assert _over_the_limit(package) == {"pkg/m.py:3 too_many": 13, "pkg/m.py:4 also": 13}


def test_every_device_option_defaults_to_auto_and_states_the_rule():
    from fastall.cli import cli
    from fastall.system.devices import DEVICE_RULE

    options = {
        name: param
        for name, command in cli.commands.items()
        for param in command.params
        if param.name == "device"
    }
    assert {"extract", "train-head", "sweep", "compare", "demo", "verify", "bench", "predict", "explain",
            "evaluate", "probe"} <= set(options)  # fmt: skip
    assert {name: (p.default, p.help) for name, p in options.items()} == {
        name: ("auto", DEVICE_RULE) for name in options
    }
