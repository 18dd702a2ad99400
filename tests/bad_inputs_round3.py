"""Round 3 of the bad-input corpus (issue 28): outputs that replace runs, hostile cache names, unbounded
configurations, foreign inputs. Appended to :data:`tests.bad_inputs.CASES`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fastall.data.synth import TREE, _bmp_bytes
from tests.bad_inputs import _EXTRACT, _TRAIN, Case, Env, _cell


def _victim(env: Env) -> Path:
    run = env.tmp / "victim"
    shutil.copytree(env.run, run)
    return run


def _other_pixels_cache(env: Env, index: int = 3) -> Path:
    """The env cache with one image's content hash changed (same names, sizes, labels and patients)."""
    from fastall.data.fingerprint import Stamp
    from fastall.features.cache import read_cache, write_cache
    from tests.e2e_helpers import stamps_of

    fc = read_cache(env.cache)
    stamps = stamps_of(fc)
    stamps[index] = Stamp("0" * 32, stamps[index].size, stamps[index].mtime_ns)
    return write_cache(
        env.tmp / "other-pixels.h5",
        features=fc.features,
        labels=fc.labels,
        class_names=fc.class_names,
        patients=list(fc.patients),
        paths=list(fc.paths),
        sources=list(fc.sources),
        view_params=fc.view_params,
        view_param_names=fc.view_param_names,
        key_params=fc.key_params,
        provenance={"data_root": fc.attrs["data_root"]},
        stamps=stamps,
    )


def _hostile_backbone(env: Env, name: str) -> list[str]:
    from tests.e2e_helpers import E2ERun, cache_with

    cache = cache_with(E2ERun(env.run, env.cache, env.data), env.tmp / "hostile.h5", backbone=name)
    out = env.tmp / "cmp"
    return ["compare", str(env.cache), str(cache), "--out", str(out), *_TRAIN]


def _latin1(folder: Path) -> None:
    with open(os.fsencode(folder) + b"/caf\xe9.bmp", "wb") as fh:
        fh.write(_bmp_bytes(_cell()))


def _latin1_predict(env: Env) -> list[str]:
    folder = env.tmp / "imgs"
    folder.mkdir()
    (folder / "ok.bmp").write_bytes(_bmp_bytes(_cell()))
    _latin1(folder)
    return ["predict", str(env.run), str(folder), "--out", str(env.tmp / "p.csv")]


def _latin1_extract(env: Env) -> list[str]:
    data = env.tmp / "data"
    shutil.copytree(env.data, data)
    _latin1(data / TREE / "training_data" / "fold_0" / "all")
    return ["extract", str(data), "--out", str(env.tmp / "c.h5"), *_EXTRACT]


_SEEDED = {
    "train-head": lambda e: ["train-head", str(e.cache), "--out", str(e.tmp / "r"), *_TRAIN],
    "sweep": lambda e: [
        "sweep",
        str(e.cache),
        "--out",
        str(e.tmp / "s"),
        "--grid",
        "lr=1e-4",
        "--folds",
        "2",
    ],
    "compare": lambda e: ["compare", str(e.cache), str(e.cache), "--out", str(e.tmp / "c")],
    "synth": lambda e: ["synth", str(e.tmp / "d")],
}

ROUND3 = [
    Case(
        "round 3: data loss",
        "evaluate RUN DATA --out RUN --overwrite (replaced the run it evaluates)",
        lambda e: ["evaluate", str(_victim(e)), str(e.data), "--out", str(e.tmp / "victim"), "--overwrite"],
        fragments=("holds a fastall-run folder, not a fastall-evaluation one",),
    ),
    Case(
        "round 3: data loss",
        "predict --out RUN/head.pt (overwrote the model's own head)",
        lambda e: ["predict", str(_victim(e)), str(e.data), "--out", str(e.tmp / "victim" / "head.pt")],
        fragments=("inside the fastall-run folder",),
    ),
    Case(
        "round 3: data loss",
        "export --out RUN/head.pt",
        lambda e: [
            "export",
            str(_victim(e)),
            "--out",
            str(e.tmp / "victim" / "head.pt"),
            "--precision",
            "fp32",
        ],
        fragments=("inside the fastall-run folder",),
    ),
    Case(
        "round 3: data loss",
        "predict --out cache.h5 (replaced an HDF5 cache with a CSV)",
        lambda e: [
            "predict",
            str(e.run),
            str(e.data),
            "--out",
            str(Path(shutil.copy(e.cache, e.tmp / "cache.h5"))),
        ],
        fragments=("is an HDF5 file",),
    ),
    Case(
        "round 3: data loss",
        "explain RUN --out RUN --overwrite (refused only after all the work)",
        lambda e: ["explain", str(_victim(e)), str(e.data), "--out", str(e.tmp / "victim"), "--overwrite"],
        fragments=("not a fastall-explain one",),
    ),
    Case(
        "round 3: security",
        "compare: a cache whose backbone is '/tmp/x' (wrote head.pt there)",
        lambda e: _hostile_backbone(e, "/tmp/x"),
        expect="reported",
        fragments=("tmp_x-",),
        show="tmp_x-",
    ),
    Case(
        "round 3: security",
        "compare: a cache whose backbone is '../../y' (wrote outside --out)",
        lambda e: _hostile_backbone(e, "../../y"),
        expect="reported",
        fragments=("y-",),
        show="training heads",
    ),
    Case(
        "round 3: wrong results",
        "compare: same names and sizes, other pixels (content fingerprint)",
        lambda e: ["compare", str(e.cache), str(_other_pixels_cache(e)), "--out", str(e.tmp / "c"), *_TRAIN],
        fragments=("content fingerprint", "1 image(s) differ"),
    ),
    Case(
        "round 3: wrong results",
        "evaluate a run on its own training images (said '100% outside ... large domain shift')",
        lambda e: ["evaluate", str(e.run), str(e.data), "--out", str(e.tmp / "ev"), "--no-report"],
        expect="reported",
        fragments=("domain shift:",),
        show="domain shift:",
    ),
    Case(
        "round 3: after the work",
        "predict on a folder holding caf\\xe9.bmp (failed writing the CSV)",
        _latin1_predict,
        expect="reported",
        fragments=("caf\\xe9.bmp", "not valid UTF-8"),
        show="not valid UTF-8",
    ),
    Case(
        "round 3: after the work",
        "extract on a tree holding caf\\xe9.bmp (failed in write_cache, every rerun too)",
        _latin1_extract,
        expect="reported",
        fragments=("caf\\xe9.bmp", "not valid UTF-8"),
        show="not valid UTF-8",
    ),
    *[
        Case(
            "round 3: after the work",
            f"{command} --seed {seed}",
            lambda e, command=command, seed=seed: [*_SEEDED[command](e), "--seed", seed],
            fragments=(f"--seed must be in 0..2**63-1, got {seed}",),
        )
        for command, seed in [
            ("train-head", "-1"),
            ("sweep", "-1"),
            ("compare", "-1"),
            ("synth", "-1"),
            ("train-head", "99999999999999999999"),
        ]
    ],
]
