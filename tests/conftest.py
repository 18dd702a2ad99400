"""Shared fixtures: a tiny synthetic C-NMC tree, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

MANIFEST = Path(__file__).resolve().parents[1].parent / "shared/data/cnmc2019_training_manifest.txt"


@pytest.fixture(scope="session")
def synth_tree(tmp_path_factory) -> Path:
    """Folder holding ``C-NMC_Leukemia/`` (32 px, 3 patients per class, prelim and testing). Do not modify."""
    from fastall.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, patients_per_class=3, images_per_patient=4, size=32, seed=0, testing=True)
    return out


@pytest.fixture
def one_thread():
    """Tiny matmuls on a shared 2-core machine: one thread avoids OpenMP hand-offs between busy cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fault_at():
    """Install a fault hook for one test: ``fault_at(ENOSPC_AT="text")`` or ``fault_at(KILL_AT="shard:2")``
    (the ``FASTALL_TEST_*`` names without the prefix); removed after the test."""
    from fastall.system import faults

    previous = faults.install(None)

    def install(**spec: str) -> None:
        faults.install(faults.env_hook({f"FASTALL_TEST_{k}": v for k, v in spec.items()}))

    yield install
    faults.install(previous)


# prepended to the code of a ``python -c`` child that runs library code under a FASTALL_TEST_* variable (only
# the CLI installs the hook by itself)
INSTALL_ENV_HOOK = "from fastall.system import faults; faults.install(faults.env_hook())\n"
