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
        ("fastall/preprocess.py", "from fastall.features import augment"),
        ("fastall/viewparams.py", "import fastall.features.cache"),
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
            "evaluate", "probe", "finetune", "screen"} <= set(options)  # fmt: skip
    assert {name: (p.default, p.help) for name, p in options.items()} == {
        name: ("auto", DEVICE_RULE) for name in options
    }


def _library_files() -> list[Path]:
    """Every module of the library: fastall/ outside the CLI (cli/) and the renderers (reporting/)."""
    skip = ("fastall/cli/", "fastall/reporting/", "fastall/__main__.py")
    return [
        p for p in sorted((ROOT / "fastall").rglob("*.py")) if not str(p.relative_to(ROOT)).startswith(skip)
    ]


def _ui_sites(path: Path, root: Path = ROOT) -> list[str]:
    """``Console``, ``Progress`` and ``print`` in ``path`` (names, attributes, imports): ``file:line x``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names = [a.name.split(".")[-1] for a in node.names]
            names += ["rich.console"] if getattr(node, "module", "") == "rich.console" else []
        for name in names:
            if name in ("Console", "Progress", "print", "rich.console"):
                found.append(f"{path.relative_to(root)}:{node.lineno} {name}")
    return found


def test_the_library_is_silent():
    """No Console, progress bar or print below the CLI and the renderers (the library reports through
    fastall.system.events)."""
    sites = [s for p in _library_files() for s in _ui_sites(p)]
    assert sites == []


def test_the_silence_check_has_teeth(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from rich.console import Console\nprint('x')\nbar = rich.progress.Progress()\n")
    assert [s.split()[-1] for s in _ui_sites(bad, tmp_path)] == [
        "Console",
        "rich.console",
        "print",
        "Progress",
    ]


def test_importing_the_library_has_no_global_side_effects():
    """Importing every library module leaves os.environ, the warnings filters, Pillow's bomb limit and
    cuDNN's autotuner as they were; the CLI's entry point alone chooses the passive OpenMP policy."""
    code = """
import importlib, os, pathlib, sys, warnings
import PIL.Image, sklearn, torch, torch._inductor.config  # these set variables of their own at import
env, filters = dict(os.environ), list(warnings.filters)
pil, bench = PIL.Image.MAX_IMAGE_PIXELS, torch.backends.cudnn.benchmark
import fastall
root = pathlib.Path(fastall.__file__).parent
names = [".".join(("fastall", *p.relative_to(root).with_suffix("").parts)) for p in root.rglob("*.py")]
names = [n.removesuffix(".__init__") for n in names if not n.startswith(("fastall.cli", "fastall.__main__"))]
for name in names:
    try:
        importlib.import_module(name)
    except ImportError:
        pass  # an optional extra that is not installed
changed = {k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)}
assert not changed, changed
assert warnings.filters == filters, "warnings filters changed"
assert PIL.Image.MAX_IMAGE_PIXELS == pil and torch.backends.cudnn.benchmark == bench
import fastall.cli  # torch is loaded already: too late to choose, so it does not pretend to
assert "OMP_WAIT_POLICY" not in os.environ and fastall.system.openmp.in_force() is None
print(len(names))
"""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 100


def test_the_cli_chooses_passive_openmp_before_torch_loads():
    code = (
        "import fastall.cli, os; print(os.environ.get('OMP_WAIT_POLICY'), fastall.system.openmp.in_force())"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.split() == ["PASSIVE", "PASSIVE"], result.stderr[-2000:]


def test_one_module_calls_fsync():
    """One owner of durable writes: every fsync lives in fastall/system/files.py."""
    owners = {
        str(p.relative_to(ROOT)) for p in (ROOT / "fastall").rglob("*.py") if "os.fsync" in p.read_text()
    }
    assert owners == {"fastall/system/files.py"}
