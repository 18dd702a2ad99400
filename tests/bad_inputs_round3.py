"""Round 3 of the bad-input corpus (issue 28): outputs that replace runs, hostile cache names, unbounded
configurations, foreign inputs. Appended to :data:`tests.bad_inputs.CASES`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fastall.data.synth import TREE, _bmp_bytes
from tests.bad_inputs import _EXTRACT, _HAVE_ORT, _TRAIN, Case, Env, _cell, _foreign_cache


def _victim(env: Env) -> Path:
    run = env.tmp / "victim"
    shutil.copytree(env.run, run)
    return run


def _other_pixels_cache(env: Env, index: int = 3) -> Path:
    """The env cache with one image's content hash changed (same names, sizes, labels and patients)."""
    from fastall.data.fingerprint import Stamp
    from fastall.features.cache import read_cache
    from tests.e2e_helpers import E2ERun, cache_with, stamps_of

    stamps = stamps_of(read_cache(env.cache))
    stamps[index] = Stamp("0" * 32, stamps[index].size, stamps[index].mtime_ns)
    return cache_with(E2ERun(env.run, env.cache, env.data), env.tmp / "other-pixels.h5", stamps=stamps)


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


def _edited_head(env: Env, edit) -> Path:
    import torch

    run = _victim(env)
    blob = torch.load(run / "head.pt", weights_only=True)
    edit(blob)
    torch.save(blob, run / "head.pt")
    return run


def _edited_predictions(env: Env, edit) -> Path:
    run = _victim(env)
    path = run / "predictions.csv"
    if callable(edit):
        lines = path.read_text().splitlines()
        path.write_text("\n".join(edit(lines)) + "\n")
    else:
        path.write_bytes(edit)
    return run


def _nan_probability(lines: list[str]) -> list[str]:
    header = lines[0].split(",")
    column = header.index("p_all")
    row = lines[1].split(",")
    row[column] = "nan"
    return [lines[0], ",".join(row), *lines[2:]]


def _probability(value: str):
    def edit(lines: list[str]) -> list[str]:
        column = lines[0].split(",").index("p_all")
        row = lines[1].split(",")
        row[column] = value
        return [lines[0], ",".join(row), *lines[2:]]

    return edit


def _unknown_label(lines: list[str]) -> list[str]:
    column = lines[0].split(",").index("true_class")
    row = lines[1].split(",")
    row[column] = "ghost"
    return [lines[0], ",".join(row), *lines[2:]]


def _fifo_predictions(env: Env) -> list[str]:
    run = _victim(env)
    (run / "predictions.csv").unlink()
    os.mkfifo(run / "predictions.csv")
    return ["evaluate", str(run), str(env.data), "--out", str(env.tmp / "ev"), "--threshold", "youden"]


def _formula_classes(env: Env) -> list[str]:
    import h5py

    cache = env.tmp / "formula.h5"
    shutil.copy(env.cache, cache)
    with h5py.File(cache, "r+") as f:
        del f["class_names"]
        f.create_dataset(
            "class_names", data=['=HYPERLINK("http://x","y")', "@SUM(1+1)"], dtype=h5py.string_dtype()
        )
    return ["train-head", str(cache), "--out", str(env.tmp / "r"), *_TRAIN]


def _generic_tree(env: Env, classes: tuple[str, ...]) -> Path:
    root = env.tmp / "generic"
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(2):
            (root / cls / f"p{i}_{i}.bmp").write_bytes(_bmp_bytes(_cell()))
    return root


def _evaluate_generic(env: Env, classes: tuple[str, ...], *extra: str) -> list[str]:
    root = _generic_tree(env, classes)
    return ["evaluate", str(env.run), str(root), "--out", str(env.tmp / "ev"), "--no-report", *extra]


def _one_patient_per_class(env: Env) -> list[str]:
    from tests.bad_inputs import _with_patients

    cache = _with_patients(env, "one.h5", lambda patients, labels, names: [names[y] for y in labels])
    return ["train-head", str(cache), "--out", str(env.tmp / "r"), "--folds", "2", "--test", "none"]


def _flipped_onnx(env: Env) -> list[str]:
    from click.testing import CliRunner

    from fastall.cli import cli

    model = env.tmp / "m.onnx"
    CliRunner().invoke(
        cli, ["export", str(env.run), "--format", "onnx", "--out", str(model), "--images", "4"]
    )
    data = bytearray(model.read_bytes())
    for i in range(1000):
        data[len(data) // 2 + i] ^= 0xFF
    model.write_bytes(bytes(data))
    return ["bench", "--device", "cpu", "--onnx", str(model), "--images", "2", "--iters", "1"]


def _foreign_onnx(env: Env) -> list[str]:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])],
    )
    onnx.save(helper.make_model(graph), str(env.tmp / "foreign.onnx"))
    return ["bench", "--device", "cpu", "--onnx", str(env.tmp / "foreign.onnx"), "--images", "2"]


def _ood_field(env: Env) -> list[str]:
    import numpy as np
    from PIL import Image

    folder = env.tmp / "field"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (400, 600, 3), dtype=np.uint8)).save(folder / "smear.png")
    (folder / "cell.bmp").write_bytes(_bmp_bytes(_cell()))
    return ["predict", str(env.run), str(folder), "--out", str(env.tmp / "p.csv")]


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


def _extract_maps(env: Env, *extra: str) -> list[str]:
    """``extract --maps layer3`` of the env's data into a new store, with ``extra`` options."""
    return ["extract", str(env.data), "--out", str(env.tmp / "m.h5"), *_EXTRACT, "--maps", "layer3", *extra]


def _maps_store(env: Env, nan: bool = False) -> Path:
    """A maps store of the env's data (resnet18 at 32 px, cut after layer3); ``nan``: one map set to NaN."""
    from fastall.features.extract import extract

    out = env.tmp / "maps.h5"
    extract(
        env.data,
        out,
        views=2,
        image_size=32,
        weights="none",
        backbone="resnet18",
        device="cpu",
        precision="fp32",
        maps="layer3",
    )
    if nan:
        import h5py
        import numpy as np

        with h5py.File(out, "r+") as f:
            f["maps"][1, 0] = np.nan
    return out


def _finetune(env: Env, store: Path, *extra: str) -> list[str]:
    return [
        "finetune",
        str(store),
        "--out",
        str(env.tmp / "ft"),
        "--folds",
        "2",
        "--epochs",
        "1",
        "--test",
        "none",
        "--no-report",
        *extra,
    ]


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
        show="hostile.h5",
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
    Case(
        "round 3: security",
        "class folders named =HYPERLINK(...) and @SUM(1+1) (reached every CSV as formulas)",
        _formula_classes,
        expect="ok",
    ),
    Case(
        "round 3: hangs",
        "evaluate --threshold youden with RUN/predictions.csv a FIFO (blocked forever)",
        _fifo_predictions,
        fragments=("named pipe (FIFO)",),
    ),
    Case(
        "round 3: hangs",
        "bench --threads 100000 (segfault, exit 139)",
        lambda e: ["bench", "--threads", "100000", "--images", "1", "--iters", "1"],
        fragments=("--threads 100000", "core(s)"),
    ),
    Case(
        "round 3: hangs",
        "sweep --random 1000000 (grew past 2.8 GB showing '0/1 groups')",
        lambda e: ["sweep", str(e.cache), "--out", str(e.tmp / "s"), "--random", "1000000", "--folds", "2"],
        fragments=("--random: 1,000,000 configuration(s)", "GiB", "use at most"),
    ),
    Case(
        "round 3: hangs",
        "train-head --tune with a 5,000,000-configuration grid (ran minutes without output)",
        lambda e: [
            "train-head",
            str(e.cache),
            "--out",
            str(e.tmp / "r"),
            "--selection",
            "inner",
            "--tune",
            " ".join(
                f"{k}={','.join(str(v) for v in range(1, 101))}" for k in ("epochs", "hidden", "batch_size")
            )
            + " dropout=0.1,0.2,0.3,0.4,0.5",
        ],
        fragments=("--tune: 5,000,000 configuration(s)", "GiB"),
    ),
    Case(
        "round 3: wrong results",
        "evaluate: DATA classes 'ALL'/'HEM' for a run of 'all'/'hem' (matched ignoring case)",
        lambda e: _evaluate_generic(e, ("ALL", "HEM")),
        fragments=("DATA class 'ALL' is not a class of the run",),
    ),
    Case(
        "round 3: wrong results",
        "evaluate --classes x=all,x=hem (the last entry won)",
        lambda e: _evaluate_generic(e, ("x", "y"), "--classes", "x=all,x=hem,y=hem"),
        fragments=("'x' is mapped twice",),
    ),
    Case(
        "round 3: wrong results",
        "evaluate --classes ghost=all (a class DATA does not hold; ignored)",
        lambda e: _evaluate_generic(e, ("all", "hem"), "--classes", "ghost=all"),
        fragments=("'ghost', not a class of DATA",),
    ),
    Case(
        "round 3: wrong results",
        "evaluate --cache another dataset's cache (shift measured against the wrong data)",
        lambda e: [
            "evaluate",
            str(e.run),
            str(e.data),
            "--out",
            str(e.tmp / "ev"),
            "--cache",
            str(_other_pixels_cache(e)),
        ],
        fragments=("does not match the run",),
    ),
    Case(
        "round 3: wrong results",
        "evaluate --cache another backbone's cache (crashed on a 512 vs 960 broadcast)",
        lambda e: [
            "evaluate",
            str(e.run),
            str(e.data),
            "--out",
            str(e.tmp / "ev"),
            "--cache",
            str(_foreign_cache(e, backbone="resnet18")),
        ],
        fragments=("does not match the run", "backbone"),
    ),
    *[
        Case(
            "round 3: wrong results",
            f"a head with {what} (predict wrote nan probabilities)",
            lambda e, edit=edit: [
                "predict",
                str(_edited_head(e, edit)),
                str(e.data),
                "--out",
                str(e.tmp / "p.csv"),
            ],
            fragments=(fragment,),
        )
        for what, edit, fragment in [
            (
                "NaN weights",
                lambda b: b["state_dict"]["fc1.weight"].view(-1)[:3].fill_(float("nan")),
                "non-finite",
            ),
            ("Inf weights", lambda b: b["state_dict"]["fc2.bias"].fill_(float("inf")), "non-finite"),
            ("dropout NaN", lambda b: b["head_config"].update(dropout=float("nan")), "dropout nan"),
            ("a std of zeros", lambda b: b["state_dict"]["std"].zero_(), "'std' has"),
            ("a mean that is a string", lambda b: b["state_dict"].update(mean="zero"), "'mean' is a str"),
        ]
    ],
    Case(
        "round 3: foreign inputs",
        "evaluate --threshold youden on NaN in predictions.csv",
        lambda e: [
            "evaluate",
            str(_edited_predictions(e, _nan_probability)),
            str(e.data),
            "--out",
            str(e.tmp / "ev"),
            "--threshold",
            "youden",
        ],
        fragments=("not in [0, 1]",),
    ),
    *[
        Case(
            "round 3: foreign inputs",
            f"report on {what} predictions.csv",
            lambda e, edit=edit: ["report", str(_edited_predictions(e, edit))],
            fragments=(fragment,),
        )
        for what, edit, fragment in [
            ("an empty", b"", "no prediction rows"),
            ("a header-only", lambda lines: lines[:1], "no prediction rows"),
            ("a binary", bytes(range(256)) * 4, "predictions.csv"),
            ("a probability 1.5 in", _probability("1.5"), "not in [0, 1]"),
            ("an inf probability in", _probability("inf"), "not in [0, 1]"),
            ("an unknown label in", _unknown_label, "'ghost' is not one of the run's classes"),
        ]
    ],
    Case(
        "round 3: small",
        "sweep --random 0 (said 'a range needs --random N')",
        lambda e: ["sweep", str(e.cache), "--out", str(e.tmp / "s"), "--random", "0"],
        fragments=("--random 0: expected at least 1 configuration",),
    ),
    Case(
        "round 3: small",
        "--patient-regex '()' (said 'no images found')",
        lambda e: _evaluate_generic(e, ("all", "hem"), "--patient-regex", "()"),
        fragments=("empty patient ID",),
    ),
    Case(
        "round 3: small",
        "train-head --folds 2 --test none, one patient per class (advised 'use --test none')",
        _one_patient_per_class,
        fragments=("add patients (cross-validation needs at least 2 per class)",),
    ),
    Case(
        "round 3: ood",
        "predict on a noise 'smear field' beside a cell (P = 0.9999, no word)",
        _ood_field,
        expect="reported",
        fragments=("ood:",),
        show="ood:",
    ),
]

ROUND3 += [
    Case(
        "round 3: small",
        "compare on a full disk (the message named a temporary folder)",
        lambda e: _hostile_backbone(e, "other"),
        fragments=("cmp/runs/", "no space left on device"),
        env=(("FASTALL_TEST_ENOSPC_AT", "run-folder"),),
    ),
    Case(
        "round 3: small",
        "predict with a skipped file on a full disk (left p.csv without p.skipped.csv)",
        lambda e: _latin1_predict(e),
        fragments=("p.skipped.csv", "no space left on device"),
        env=(("FASTALL_TEST_ENOSPC_AT", "text"),),
    ),
    Case(
        "round 3: finetune",
        "finetune on a cache made without --maps",
        lambda e: ["finetune", str(e.cache), "--out", str(e.tmp / "ft")],
        fragments=("holds no activation maps", "--maps layer3"),
    ),
    Case(
        "round 3: finetune",
        "extract --maps with --precision int8 (finetune trains on fp32/bf16 maps)",
        lambda e: _extract_maps(e, "--precision", "int8"),
        fragments=("--maps", "drop --precision int8"),
    ),
    Case(
        "round 3: finetune",
        "finetune --train layer3 on a store cut after layer3",
        lambda e: _finetune(e, _maps_store(e), "--train", "layer3"),
        fragments=("--train layer3", "layer4"),
    ),
    Case(
        "round 3: finetune",
        "finetune --tune with a name finetune does not have",
        lambda e: _finetune(e, _maps_store(e), "--tune", "plateau_factor=0.5"),
        fragments=("unknown parameter 'plateau_factor'",),
    ),
    Case(
        "round 3: finetune",
        "finetune on a store whose map of one image was set to NaN",
        lambda e: _finetune(e, _maps_store(e, nan=True), "--preset", "paper"),
        fragments=("holds NaN/Inf",),
    ),
    Case(
        "round 3: finetune",
        "extract --maps layer3 --map-views 5 with --views 2",
        lambda e: _extract_maps(e, "--map-views", "5"),
        fragments=("--map-views 5 needs --maps and at most --views (2)",),
    ),
    Case(
        "round 3: finetune",
        "extract --maps layer3 on a backbone without a declared cut (densenet121)",
        lambda e: _extract_maps(e, "--backbone", "densenet121"),
        fragments=("maps are cut from resnet18, resnet50, resnet101",),
    ),
]

if _HAVE_ORT:
    ROUND3 += [
        Case(
            "round 3: ONNX",
            "bench --onnx on a fastall export with 1,000 flipped bytes (only 'agrees on 25%' showed it)",
            _flipped_onnx,
            fragments=("sha256",),
        ),
        Case(
            "round 3: ONNX",
            "bench --onnx on a foreign model (float input, fixed batch 1, other names, one output)",
            _foreign_onnx,
            fragments=("not an ONNX model made by `fastall export --format onnx`",),
        ),
    ]
