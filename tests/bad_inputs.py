"""The bad-input corpus: every case builds its input in a temp folder and names the command that meets it.

Used by tests/test_hardening.py (each case ends in a one-line message, the right exit code, no traceback) and
by scripts/hardening_table.py (docs/hardening.md shows what the user sees, taken from a real run).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

from fastall.data.synth import TREE, _bmp_bytes
from fastall.system.machine import AVX2_EMULATION_ENV, cpu_capability

_HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None
_CPU_FP16 = cpu_capability().native_fp16


@dataclass(frozen=True)
class Env:
    """A shared tiny pipeline: data (a synth tree), its cache and a trained run."""

    data: Path
    cache: Path
    run: Path
    tmp: Path


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    build: Callable[[Env], list[str]]
    expect: str = "fatal"  # fatal: non-zero exit, one-line error; reported: listed, exit 0; ok: accepted
    fragments: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # environment of the run (test hooks such as a simulated full disk)
    show: str = ""  # for ok/reported cases: the docs show the first output line holding this text


def _cell(side: int = 40) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    disk = ((yy - side / 2) ** 2 + (xx - side / 2) ** 2) < (side / 3) ** 2
    img = np.zeros((side, side, 3), np.uint8)
    img[disk] = (150, 90, 170)
    return img


def _predict(env: Env, name: str, write: Callable[[Path], None], *extra: str) -> list[str]:
    path = env.tmp / name
    write(path)
    return ["predict", str(env.run), str(path), "--out", str(env.tmp / "p.csv"), "--no-skip-bad", *extra]


def _save(mode: str, fmt: str = "PNG", **kw) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        img = Image.fromarray(_cell())
        if mode == "I;16":
            img = Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)
        else:
            img = img.convert(mode)
        img.save(path, format=fmt, **kw)

    return write


def _exif_jpeg(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_cell()).save(path, format="JPEG", exif=exif)


def _png_as_bmp(path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_cell()).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def _loop(path: Path) -> None:
    os.symlink(path.name, path)


def _tree_copy(env: Env, name: str) -> Path:
    dest = env.tmp / name
    shutil.copytree(env.data, dest)
    return dest / TREE


def _csv_case(edit: Callable[[list[str]], list[str]]) -> Callable[[Env], list[str]]:
    def build(env: Env) -> list[str]:
        root = _tree_copy(env, "csv")
        csv = next(root.glob("validation_data/*.csv"))
        csv.write_text("\n".join(edit(csv.read_text().splitlines())) + "\n")
        return ["scan", str(root.parent)]

    return build


def _generic(env: Env, classes: dict[str, int]) -> Path:
    root = env.tmp / "generic"
    for cls, count in classes.items():
        (root / cls).mkdir(parents=True)
        for i in range(count):
            (root / cls / f"p{i % 3}_{i}.bmp").write_bytes(_bmp_bytes(_cell(32)))
    return root


def _cache_attr(env: Env, name: str, value) -> Path:
    path = env.tmp / f"{name}.h5"
    shutil.copy(env.cache, path)
    with h5py.File(path, "r+") as f:
        f.attrs[name] = value
    return path


def _foreign_cache(env: Env, **changes) -> Path:
    from tests.e2e_helpers import E2ERun, cache_with

    return cache_with(E2ERun(env.run, env.cache, env.data), env.tmp / "foreign.h5", **changes)


def _fake_run(env: Env, blob) -> Path:
    run = env.tmp / "fake_run"
    run.mkdir()
    if isinstance(blob, bytes):
        (run / "head.pt").write_bytes(blob)
    else:
        torch.save(blob, run / "head.pt")
    return run


def _pickled_code() -> bytes:
    buf = io.BytesIO()
    torch.save({"x": np.random.default_rng(0)}, buf)
    return buf.getvalue()


def _fifo_beside_an_image(folder: Path) -> None:
    (folder / "cell.bmp").write_bytes(_bmp_bytes(_cell()))
    os.mkfifo(folder / "fifo.bmp")


def _predict_folder(env: Env, fill: Callable[[Path], None]) -> list[str]:
    folder = env.tmp / "folder"
    folder.mkdir()
    fill(folder)
    return ["predict", str(env.run), str(folder), "--out", str(env.tmp / "p.csv")]


CASES: list[Case] = [
    Case(
        "image",
        "zero-byte file",
        lambda e: _predict(e, "empty.bmp", lambda p: p.write_bytes(b"")),
        fragments=("empty.bmp",),
    ),
    Case(
        "image",
        "truncated BMP",
        lambda e: _predict(e, "trunc.bmp", lambda p: p.write_bytes(_bmp_bytes(_cell())[:500])),
        fragments=("trunc.bmp",),
    ),
    Case(
        "image",
        "PNG named .bmp (decoded by content)",
        lambda e: _predict(e, "png.bmp", _png_as_bmp),
        expect="ok",
    ),
    Case(
        "image",
        "text file with an image extension",
        lambda e: _predict(e, "notes.bmp", lambda p: p.write_text("not an image\n")),
        fragments=("notes.bmp",),
    ),
    Case("image", "grayscale image (converted)", lambda e: _predict(e, "gray.png", _save("L")), expect="ok"),
    Case(
        "image",
        "RGBA image (composited on black)",
        lambda e: _predict(e, "rgba.png", _save("RGBA")),
        expect="ok",
    ),
    Case(
        "image",
        "16-bit image (scaled to 8 bit)",
        lambda e: _predict(e, "deep.png", _save("I;16")),
        expect="ok",
    ),
    Case("image", "palette image (converted)", lambda e: _predict(e, "pal.png", _save("P")), expect="ok"),
    Case(
        "image",
        "1x1 image",
        lambda e: _predict(
            e, "dot.bmp", lambda p: p.write_bytes(_bmp_bytes(np.full((1, 1, 3), 200, np.uint8)))
        ),
        expect="ok",
    ),
    Case(
        "image",
        "decompression-bomb-sized image (limit FASTALL_MAX_PIXELS)",
        lambda e: _predict(e, "bomb.png", lambda p: Image.new("RGB", (9000, 9000)).save(p)),
        fragments=("bomb.png", "FASTALL_MAX_PIXELS"),
    ),
    Case(
        "image",
        "EXIF-rotated JPEG (orientation applied)",
        lambda e: _predict(e, "exif.jpg", _exif_jpeg),
        expect="ok",
    ),
    Case("image", "symlink loop", lambda e: _predict(e, "loop.bmp", _loop), fragments=("loop.bmp",)),
    Case(
        "image",
        "name with spaces and unicode",
        lambda e: _predict(e, "cellule été 1.bmp", lambda p: p.write_bytes(_bmp_bytes(_cell()))),
        expect="ok",
    ),
    Case(
        "labels CSV",
        "missing column",
        _csv_case(lambda rows: [r.rsplit(",", 1)[0] for r in rows]),
        fragments=("labels",),
    ),
    Case(
        "labels CSV",
        "row naming an absent file (row skipped, listed)",
        _csv_case(lambda rows: rows + ["UID_99_1_1_all.bmp,999.bmp,1"]),
        expect="reported",
        fragments=("999.bmp",),
    ),
    Case(
        "labels CSV",
        "new_names with path traversal",
        _csv_case(lambda rows: rows + ["UID_98_1_1_all,../../x.bmp,1"]),
        fragments=("../../x.bmp",),
    ),
    Case(
        "labels CSV",
        "duplicated row",
        _csv_case(lambda rows: rows + [rows[1]]),
        expect="reported",
        fragments=("C-NMC_test_prelim_phase_data_labels.csv",),
    ),
    Case(
        "dataset",
        "empty dataset",
        lambda e: ["scan", str((e.tmp / "nothing").mkdir() or e.tmp / "nothing")],
        fragments=("nothing",),
    ),
    Case(
        "dataset",
        "single-class dataset, given to train-head",
        lambda e: ["train-head", str(_one_class_cache(e)), "--out", str(e.tmp / "r")],
        fragments=("class",),
    ),
    Case(
        "dataset",
        "a class with fewer patients than folds",
        lambda e: ["train-head", str(e.cache), "--folds", "10", "--out", str(e.tmp / "r")],
        fragments=("folds",),
    ),
    Case(
        "cache",
        "truncated cache file",
        lambda e: ["train-head", str(_truncate(e)), "--out", str(e.tmp / "r")],
        fragments=("cut.h5",),
    ),
    Case(
        "cache",
        "cache from another schema version",
        lambda e: ["train-head", str(_cache_attr(e, "schema_version", 99)), "--out", str(e.tmp / "r")],
        fragments=("schema",),
    ),
    Case(
        "cache",
        "cache from another image size, given to verify",
        lambda e: ["verify", str(e.run), "--cache", str(_foreign_cache(e, image_size=48))],
        fragments=("image_size",),
    ),
    Case(
        "cache",
        "cache from other weights, given to verify",
        lambda e: ["verify", str(e.run), "--cache", str(_foreign_cache(e, weights_sha256="0" * 64))],
        fragments=("weights_sha256",),
    ),
    Case(
        "run",
        "head file that is not a fastall head",
        lambda e: [
            "predict",
            str(_fake_run(e, {"weight": torch.zeros(3)})),
            str(e.data),
            "--out",
            str(e.tmp / "p.csv"),
        ],
        fragments=("head.pt",),
    ),
    Case(
        "run",
        "head file holding pickled code (never unpickled)",
        lambda e: ["predict", str(_fake_run(e, _pickled_code())), str(e.data), "--out", str(e.tmp / "p.csv")],
        fragments=("head.pt",),
    ),
    Case(
        "run",
        "head file that is text",
        lambda e: ["verify", str(_fake_run(e, b"hello\n"))],
        fragments=("head.pt",),
    ),
    # arch-inference: the one walker (non-regular entries reported, never opened), the one device resolver
    Case(
        "image",
        "named pipe (FIFO) in a folder given to predict (reported, never opened)",
        lambda e: _predict_folder(e, _fifo_beside_an_image),
        expect="reported",
        fragments=("fifo.bmp", "special file"),
    ),
    Case(
        "device",
        "--device cuda:7, a GPU that is not here",
        lambda e: ["predict", str(e.run), str(e.data), "--out", str(e.tmp / "p.csv"), "--device", "cuda:7"],
        fragments=("cuda:7",),
    ),
    Case(
        "device",
        "unknown --device name",
        lambda e: ["verify", str(e.run), "--device", "gpu"],
        fragments=("gpu", "cuda:N"),
    ),
    Case(
        "distributed",
        "--distributed outside torchrun",
        lambda e: ["extract", str(e.data), "--out", str(e.tmp / "c.h5"), "--distributed"],
        fragments=("--distributed", "RANK", "torchrun --nproc_per_node"),
    ),
    Case(
        "distributed",
        "predict --distributed outside torchrun",
        lambda e: ["predict", str(e.run), str(e.data), "--out", str(e.tmp / "p.csv"), "--distributed"],
        fragments=("--distributed", "torchrun"),
    ),
    Case(
        "distributed",
        "resuming the unfinished work of 2 torchrun ranks with one process",
        lambda e: _extract_over(e, "c.h5.partial/rank-1-of-2"),
        fragments=("c.h5.partial", "by 2 process(es), this run has 1", "--overwrite"),
    ),
    Case(
        "distributed",
        "--scratch folder that does not exist",
        lambda e: ["extract", str(e.data), "--out", str(e.tmp / "c.h5"), "--scratch", str(e.tmp / "nope")],
        fragments=("--scratch", "nope"),
    ),
    # explain (issue 15)
    Case(
        "explain",
        "unknown --target class (lists the run's classes)",
        lambda e: ["explain", str(e.run), str(e.data), "--out", str(e.tmp / "ex"), "--target", "blast"],
        fragments=("blast", "hem", "all"),
    ),
    Case(
        "explain",
        "unknown --method",
        lambda e: ["explain", str(e.run), str(e.data), "--out", str(e.tmp / "ex"), "--method", "shap"],
        fragments=("shap", "gradcam++", "layercam"),
    ),
    Case(
        "explain",
        "unreadable image among readable ones (reported, skipped)",
        lambda e: ["explain", str(e.run), str(_one_good_one_bad(e)), "--out", str(e.tmp / "ex")],
        expect="reported",
        fragments=("trunc.bmp", "skipped.csv"),
    ),
    Case(
        "explain",
        "run whose weights file has moved",
        lambda e: ["explain", str(_moved_weights_run(e)), str(e.data), "--out", str(e.tmp / "ex")],
        fragments=("gone.pth", "--weights-path"),
    ),
    Case(
        "explain",
        "relative path under a data root that has moved",
        lambda e: [
            "explain",
            str(e.run),
            "fold_0/x.bmp",
            "--data",
            str(e.tmp / "moved"),
            "--out",
            str(e.tmp / "ex"),
        ],
        fragments=("moved", "--data"),
    ),
    Case(
        "explain",
        "--out holding other files (never overwritten)",
        lambda e: ["explain", str(e.run), str(e.data), "--out", str(_occupied(e))],
        fragments=("occupied", "--out"),
    ),
    # issue 13: `fastall report` (figures and HTML from a run folder alone)
    Case(
        "report",
        "folder that is not a run (no metrics.json, predictions.csv or results.json)",
        lambda e: ["report", str(_mkdir(e.tmp / "not_a_run"))],
        fragments=("not a fastall run folder",),
    ),
    Case(
        "report",
        "run without metrics.json (figures still made from predictions.csv)",
        lambda e: ["report", str(_run_copy(e, drop="metrics.json"))],
        expect="reported",
        fragments=("metrics.json is missing", "; report:"),
    ),
    Case(
        "report",
        "run made before per-epoch history was recorded (other figures made)",
        lambda e: ["report", str(_run_copy(e, old=True))],
        expect="reported",
        fragments=("no per-epoch history", "; report:"),
    ),
    Case(
        "report",
        "metrics.json that is not JSON",
        lambda e: ["report", str(_run_copy(e, metrics=b"{not json"))],
        fragments=("metrics.json", "unreadable"),
    ),
    Case(
        "report",
        "--data folder that does not exist",
        lambda e: ["report", str(_run_copy(e)), "--data", str(e.tmp / "nowhere")],
        fragments=("--data", "no such folder"),
    ),
    Case(
        "report",
        "--data pointing at other images (recorded paths missing)",
        lambda e: ["report", str(_run_copy(e)), "--data", str(_other_data(e, patients=2, size=40, seed=7))],
        fragments=("--data", "are not there"),
    ),
    Case(
        "report",
        "--data pointing at the same names with other pixels (dataset fingerprint)",
        lambda e: ["report", str(_run_copy(e)), "--data", str(_other_data(e, patients=3, size=40, seed=1))],
        fragments=("--data", "fingerprint"),
    ),
    Case(
        "report",
        "images moved away from the recorded data root (grids left out, rest made)",
        lambda e: ["report", str(_run_copy(e, data_root=e.tmp / "moved"))],
        expect="reported",
        fragments=("grids left out", "--data DIR"),
    ),
    Case(
        "device",
        "unknown --device, given to train-head",
        lambda e: ["train-head", str(e.cache), "--device", "gpu", "--out", str(e.tmp / "r")],
        fragments=("'gpu'", "cuda:N"),
    ),
    Case(
        "device",
        "a CUDA device this machine does not have, given to train-head",
        lambda e: ["train-head", str(e.cache), "--device", "cuda:7", "--out", str(e.tmp / "r")],
        fragments=("cuda:7",),
    ),
    Case(
        "grid",
        "a range with `none` as an end, given to sweep --random",
        lambda e: [
            "sweep",
            str(e.cache),
            "--random",
            "2",
            "--grid",
            "patience=none:3",
            "--out",
            str(e.tmp / "s"),
        ],
        fragments=("patience=none:3",),
    ),
    # speed: the one precision resolver (aliases that contradict, a precision the CPU cannot compute) and ONNX
    Case(
        "precision",
        "extract --precision bf16 together with --no-amp (contradictory aliases)",
        lambda e: [*_extract_args(e), "--precision", "bf16", "--no-amp"],
        fragments=("--precision bf16", "--no-amp"),
    ),
    Case(
        "precision",
        "extract --precision int8 on a CPU without VNNI/AMX (AVX2, emulated as benchmarks --emulate does)",
        lambda e: [*_extract_args(e), "--precision", "int8"],
        fragments=("--precision int8 needs a CPU with VNNI or AMX", "AVX2 (emulated"),
        env=tuple(AVX2_EMULATION_ENV.items()),
    ),
    *(
        []
        if _CPU_FP16
        else [
            Case(
                "precision",
                "extract --precision fp16 on a CPU without native fp16",
                lambda e: [*_extract_args(e), "--precision", "fp16"],
                fragments=("fp16", "no native fp16"),
            ),
            Case(
                "precision",
                "predict --precision fp16 on a CPU without native fp16",
                lambda e: [
                    "predict",
                    str(e.run),
                    str(e.data),
                    "--out",
                    str(e.tmp / "p.csv"),
                    "--precision",
                    "fp16",
                ],
                fragments=("fp16", "no native fp16"),
            ),
        ]
    ),
    Case(
        "onnx",
        "export --format onnx with --precision int8 (the ONNX graph is fp32)",
        lambda e: [
            "export",
            str(e.run),
            "--format",
            "onnx",
            "--out",
            str(e.tmp / "m.onnx"),
            "--precision",
            "int8",
        ],
        fragments=("--format onnx", "int8"),
    ),
    Case(
        "onnx",
        "bench --onnx given a file that is not an ONNX model",
        lambda e: ["bench", "--device", "cpu", "--onnx", str(_not_onnx(e)), "--images", "2"],
        fragments=("not-a-model.onnx", "not a readable ONNX model") if _HAVE_ORT else ("fastall[onnx]",),
    ),
    # issue 11: presets, nested tuning, inner selection
    Case(
        "arguments",
        "train-head --preset that does not exist",
        lambda e: _train(e, e.cache, "--preset", "fast"),
        fragments=("'fast' is not one of 'paper', 'default'",),
    ),
    Case(
        "arguments",
        "train-head --tune grid that does not parse",
        lambda e: _train(e, e.cache, "--tune", "lr:1e-4"),
        fragments=("bad --tune token 'lr:1e-4'", "expected name=value"),
    ),
    Case(
        "arguments",
        "train-head --tune with an unknown parameter",
        lambda e: _train(e, e.cache, "--tune", "momentum=0.9"),
        fragments=("bad --tune token 'momentum=0.9'", "known: lr, weight_decay"),
    ),
    Case(
        "arguments",
        "train-head --tune with the paper preset (selects on the fold)",
        lambda e: _train(e, e.cache, "--tune", "lr=1e-4,1e-3", "--preset", "paper"),
        fragments=("--tune chooses on an inner split", "--selection inner"),
    ),
    Case(
        "data",
        "train-head --tune with too few patients per class for an inner split",
        lambda e: _train(e, _two_patients_cache(e), "--tune", "lr=1e-4,1e-3"),
        fragments=("needs at least 2 training patients of each class", "--selection fold"),
    ),
    Case(
        "data",
        "train-head (default preset), too few patients per class for an inner split: fixed schedule, stated",
        lambda e: _train(e, _two_patients_cache(e)),
        expect="reported",
        fragments=("fixed schedule, without early stopping",),
        show="fixed schedule",
    ),
    # issue 11 (fill-probe): --fill and the synthetic data's new options
    Case(
        "arguments",
        "extract --fill colour that does not parse",
        lambda e: [
            "extract",
            str(e.data),
            "--out",
            str(e.tmp / "c.h5"),
            "--weights",
            "none",
            "--fill",
            "white",
        ],
        fragments=("--fill 'white'", "auto, black, reflect, edge, median or constant:R,G,B"),
    ),
    Case(
        "arguments",
        "extract --fill constant with a channel over 255",
        lambda e: [
            "extract",
            str(e.data),
            "--out",
            str(e.tmp / "c.h5"),
            "--weights",
            "none",
            "--fill",
            "constant:300,0,0",
        ],
        fragments=("constant:R,G,B",),
    ),
    Case(
        "arguments",
        "synth --layout generic --classes 1",
        lambda e: ["synth", str(e.tmp / "s"), "--layout", "generic", "--classes", "1", "--size", "16"],
        fragments=("classes must be between 2 and 20",),
    ),
    Case(
        "arguments",
        "synth --classes 3 in the C-NMC layout",
        lambda e: ["synth", str(e.tmp / "s"), "--classes", "3", "--size", "16"],
        fragments=("C-NMC layout has 2 classes", "--layout generic"),
    ),
    Case(
        "arguments",
        "synth --layout generic --testing",
        lambda e: ["synth", str(e.tmp / "s"), "--layout", "generic", "--testing", "--size", "16"],
        fragments=("--testing needs the C-NMC layout",),
    ),
    Case(
        "arguments",
        "synth --class-margin out of range",
        lambda e: ["synth", str(e.tmp / "s"), "--class-margin", "2", "--size", "16"],
        fragments=("class margin must be between -1 and 1",),
    ),
    Case(
        "arguments",
        "synth --patient-effect negative",
        lambda e: ["synth", str(e.tmp / "s"), "--patient-effect", "-1", "--size", "16"],
        fragments=("patient effect must be between 0 and 5",),
    ),
    Case(
        "arguments",
        "synth --layout generic into a folder that is not empty (the tree is the folder itself)",
        lambda e: ["synth", str(_with_file(e.tmp / "mixed")), "--layout", "generic", "--size", "16"],
        fragments=("already exists and is not empty",),
    ),
    # issue 14: fastall evaluate
    Case(
        "evaluate",
        "DATA with a class the run does not know",
        lambda e: ["evaluate", str(e.run), str(_eval_data(e, {"all": "blast"})), "--out", str(e.tmp / "o")],
        fragments=("DATA class 'blast' is not a class of the run (its classes: hem, all)", "--classes"),
    ),
    Case(
        "evaluate",
        "DATA with an unreadable image (skipped and reported)",
        lambda e: ["evaluate", str(e.run), str(_eval_data(e, bad=True)), "--out", str(e.tmp / "o")],
        expect="reported",
        fragments=("skipped:", "broken.bmp", "(1 skipped)"),
    ),
    Case(
        "evaluate",
        "DATA with one class only (per-class figures, AUC undefined)",
        lambda e: ["evaluate", str(e.run), str(_eval_data(e, {"hem": None})), "--out", str(e.tmp / "o")],
        expect="reported",
        fragments=("one class only (all)", "AUC is undefined"),
    ),
    Case(
        "evaluate",
        "DATA that is the run's own training images",
        lambda e: ["evaluate", str(e.run), str(e.data), "--out", str(e.tmp / "o")],
        expect="reported",
        fragments=("have the same file contents as the run's training images",),
    ),
    Case(
        "evaluate",
        "a run whose cache has moved (shift not measured, --cache named)",
        lambda e: ["evaluate", str(_run_moved_cache(e)), str(_eval_data(e)), "--out", str(e.tmp / "o")],
        expect="reported",
        fragments=("is not here (pass --cache PATH)",),
    ),
    Case(
        "evaluate",
        "a RUN folder that is not a run",
        lambda e: ["evaluate", str(_mkdir(e.tmp / "nothing")), str(e.data), "--out", str(e.tmp / "o")],
        fragments=("no head.pt",),
    ),
    Case(
        "evaluate",
        "--threshold that is neither a number, youden nor sens=S",
        lambda e: ["evaluate", str(e.run), str(e.data), "--out", str(e.tmp / "o"), "--threshold", "best"],
        fragments=("use a number (0.5), youden or sens=0.95",),
    ),
    # backbones: an unknown name, a size the model cannot take, another architecture's weights; compare
    Case(
        "backbone",
        "unknown --backbone name (the choices are listed)",
        lambda e: [
            "extract",
            str(e.data),
            "--out",
            str(e.tmp / "c.h5"),
            "--backbone",
            "vgg16",
            "--weights",
            "none",
        ],
        fragments=("vgg16", "resnet18", "vit_b_16"),
    ),
    Case(
        "backbone",
        "--image-size a ViT cannot take (the sizes it can are listed)",
        lambda e: [
            *("extract", str(e.data), "--out", str(e.tmp / "c.h5"), "--backbone", "vit_b_16"),
            *("--weights", "none", "--image-size", "96"),
        ],
        fragments=("--image-size 96", "224", "384 (IMAGENET1K_SWAG_E2E_V1)"),
    ),
    Case(
        "backbone",
        "--weights of another architecture (named)",
        lambda e: [
            "extract",
            str(e.data),
            "--out",
            str(e.tmp / "c.h5"),
            "--weights",
            str(_resnet18_weights(e)),
        ],
        fragments=("not a ResNet-50 state dict", "--backbone resnet18"),
    ),
    Case(
        "compare",
        "caches of different datasets",
        lambda e: ["compare", str(e.cache), str(_other_patients_cache(e)), "--out", str(e.tmp / "cmp")],
        fragments=("not the same dataset", "patients differ"),
    ),
    Case(
        "compare",
        "one cache only",
        lambda e: ["compare", str(e.cache), "--out", str(e.tmp / "cmp")],
        fragments=("at least two caches",),
    ),
]


def _extract_over(env: Env, leftover: str) -> list[str]:
    (env.tmp / leftover).mkdir(parents=True)
    fast = ["--views", "1", "--image-size", "32", "--weights", "none", "--device", "cpu", "--workers", "0"]
    return ["extract", str(env.data), "--out", str(env.tmp / "c.h5"), *fast]


def _extract_args(env: Env) -> list[str]:
    return ["extract", str(env.data), "--out", str(env.tmp / "c.h5"), "--weights", "none", "--device", "cpu"]


def _not_onnx(env: Env) -> Path:
    path = env.tmp / "not-a-model.onnx"
    path.write_text("hello\n")
    return path


def _with_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("keep me\n")
    return folder


def _one_class_cache(env: Env) -> Path:
    from fastall.features.extract import extract

    out = env.tmp / "one.h5"
    extract(
        _generic(env, {"all": 6}),
        out,
        views=1,
        image_size=32,
        weights="none",
        device="cpu",
        workers=0,
        patient_regex=r"(p\d+)_",
    )
    return out


def _truncate(env: Env) -> Path:
    path = env.tmp / "cut.h5"
    path.write_bytes(env.cache.read_bytes()[:4096])
    return path


def case_id(case: Case) -> str:
    return json.dumps(f"{case.category}: {case.name}")[1:-1]


# --- hardening round 2 (issue 18): full disks and stale locks ---------------------------------------------

_ENOSPC = "FASTALL_TEST_ENOSPC_AT"  # fastall.system.files: the writes at that step fail as on a full disk
_EXTRACT = ["--views", "2", "--image-size", "32", "--weights", "none", "--device", "cpu", "--no-amp"]


def _stale_lock(env: Env, pid: int) -> list[str]:
    """A complete cache whose lock names ``pid`` with another process start (a container restart)."""
    import socket

    from fastall.system.procs import process_start

    cache = env.tmp / "c.h5"
    shutil.copy(env.cache, cache)
    boot = (process_start(os.getpid()) or "boot:0").split(":")[0]
    holder = {
        "pid": pid,
        "host": socket.gethostname(),
        "started": "before the restart",
        "pid_start": f"{boot}:1",
    }
    (env.tmp / "c.h5.lock").write_text(json.dumps(holder))
    return ["extract", str(env.data), "--out", str(cache), *_EXTRACT, "--workers", "0"]


CASES += [
    Case(
        "disk",
        "full disk while the final cache is written (simulated; was a segfault)",
        lambda e: ["extract", str(e.data), "--out", str(e.tmp / "c8.h5"), *_EXTRACT, "--workers", "0"],
        fragments=("c8.h5: cannot write cache: no space left on device", "c8.h5.partial is kept"),
        env=((_ENOSPC, "cache-tmp"),),
    ),
    Case(
        "disk",
        "full disk while train-head writes its run folder (simulated)",
        lambda e: ["train-head", str(e.cache), "--out", str(e.tmp / "r"), "--folds", "2", "--epochs", "1"],
        fragments=("r: cannot write the output folder: no space left on device",),
        env=((_ENOSPC, "run-folder"),),
    ),
    Case(
        "disk",
        "full disk while export writes the model (simulated)",
        lambda e: ["export", str(e.run), "--out", str(e.tmp / "m.pt"), "--precision", "fp32"],
        fragments=("m.pt: cannot write: no space left on device",),
        env=((_ENOSPC, "torch-save"),),
    ),
    Case(
        "disk",
        "full disk while predict writes its CSV (simulated)",
        lambda e: _predict(e, "one.bmp", lambda p: p.write_bytes(_bmp_bytes(_cell()))),
        fragments=("p.csv: cannot write (no space left on device)",),
        env=((_ENOSPC, "text"),),
    ),
    Case(
        "lock",
        "stale lock naming this process's own pid (container restart)",
        lambda e: _stale_lock(e, os.getpid()),
        expect="reported",
        fragments=("taking over a stale lock", "c.h5.lock", "nothing to do"),
        show="taking over a stale lock",
    ),
    Case(
        "lock",
        "stale lock naming pid 1, a live process that is not the holder",
        lambda e: _stale_lock(e, 1),
        expect="reported",
        fragments=("taking over a stale lock", "c.h5.lock", "pid 1 ", "nothing to do"),
        show="taking over a stale lock",
    ),
]


def _one_good_one_bad(env: Env) -> Path:
    folder = env.tmp / "imgs"
    folder.mkdir()
    (folder / "good.bmp").write_bytes(_bmp_bytes(_cell()))
    (folder / "trunc.bmp").write_bytes(_bmp_bytes(_cell())[:500])
    return folder


def _moved_weights_run(env: Env) -> Path:
    from fastall.features.cache import cache_key

    run = env.tmp / "moved_run"
    shutil.copytree(env.run, run)
    blob = torch.load(run / "head.pt", weights_only=True)
    kp = {**blob["key_params"], "weights": "file", "weights_path": str(env.tmp / "gone.pth")}
    blob.update(key_params=kp, cache_key=cache_key(kp))
    torch.save(blob, run / "head.pt")
    return run


def _occupied(env: Env) -> Path:
    out = env.tmp / "occupied"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    return out


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run_copy(
    env: Env,
    drop: str | None = None,
    metrics: bytes | None = None,
    data_root: Path | None = None,
    old: bool = False,
) -> Path:
    """A copy of the shared run (never modified), without its report, changed as asked."""
    run = env.tmp / "run_copy"
    shutil.copytree(env.run, run, ignore=shutil.ignore_patterns("report"))
    if drop:
        (run / drop).unlink()
    if metrics is not None:
        (run / "metrics.json").write_bytes(metrics)
    if data_root is not None or old:
        m = json.loads((run / "metrics.json").read_text())
        if data_root is not None:
            m["cache"]["data_root"] = str(data_root)
        if old:  # as written before the per-epoch history was recorded
            m.pop("history", None)
        (run / "metrics.json").write_text(json.dumps(m))
    return run


def _other_data(env: Env, *, patients: int, size: int, seed: int) -> Path:
    """A synthetic tree like the shared one (3 patients per class, 3 images, seed 1) but not it."""
    from fastall.data.synth import synthesize

    out = env.tmp / "other_data"
    synthesize(out, patients_per_class=patients, images_per_patient=3, size=size, seed=seed)
    return out


def _eval_data(env: Env, rename: dict | None = None, bad: bool = False) -> Path:
    """A generic labelled tree of a few shared images (re-encoded as PNG, so not byte copies): ``rename``
    maps a class folder to a new name (None drops the class); ``bad`` adds an unreadable image."""
    rename = rename or {}
    out = env.tmp / "eval_data"
    for cls in ("all", "hem"):
        target = rename.get(cls, cls)
        if target is None:
            continue
        _mkdir(out / target)
        for i, path in enumerate(sorted(env.data.rglob(f"training_data/*/{cls}/*.bmp"))[:4]):
            Image.open(path).convert("RGB").save(out / target / f"cell{i}.png")
    if bad:
        (out / "hem" / "broken.bmp").write_bytes(b"BM not really")
    return out


def _run_moved_cache(env: Env) -> Path:
    run = env.tmp / "run_moved"
    shutil.copytree(env.run, run, ignore=shutil.ignore_patterns("report"))
    head = torch.load(run / "head.pt", weights_only=True)
    head["cache_path"] = str(env.tmp / "gone.h5")
    torch.save(head, run / "head.pt")
    return run


# --- hardening round 2 (issue 18): stale content, NaN, FIFOs, symlinks, duplicates, trusted structure ------

_TRAIN = ["--folds", "2", "--epochs", "1", "--test", "none"]


def _first_image(root: Path, cls: str = "all") -> Path:
    return sorted(root.rglob(f"fold_0/{cls}/*.bmp"))[0]


def _rewrite_pixels(path: Path, keep_mtime: bool = False) -> None:
    """Other pixels, same byte size (C-NMC BMPs all have one size), optionally with the old mtime."""
    st = path.stat()
    pixels = np.asarray(Image.open(path).convert("RGB"))
    path.write_bytes(_bmp_bytes(255 - pixels))
    assert path.stat().st_size == st.st_size
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _stale(env: Env, *extra: str, keep_mtime: bool = False, touch: bool = False) -> list[str]:
    """A copy of the data and its cache; one image rewritten (or every file touched), then extract again."""
    data = env.tmp / "data"
    shutil.copytree(env.data, data)
    cache = env.tmp / "c.h5"
    shutil.copy(env.cache, cache)
    if touch:
        for path in data.rglob("*.bmp"):
            os.utime(path)
    else:
        _rewrite_pixels(_first_image(data), keep_mtime=keep_mtime)
    return ["extract", str(data), "--out", str(cache), *_EXTRACT, "--workers", "0", *extra]


def _old_cache(env: Env) -> list[str]:
    """The cache as fastall 0.1 wrote it: no content hashes."""
    from fastall.features.cache import ImageRows, read_cache, write_cache

    fc = read_cache(env.cache)
    names = ("features", "class_names", "view_params", "view_param_names", "key_params")
    rows = ImageRows.of(fc)
    cache = write_cache(env.tmp / "old.h5", **{n: getattr(fc, n) for n in names}, rows=rows, provenance={})
    return ["extract", str(env.data), "--out", str(cache), *_EXTRACT, "--workers", "0"]


def _edit_cache(env: Env, edit: Callable[[h5py.File], None], name: str = "edited.h5") -> Path:
    path = env.tmp / name
    shutil.copy(env.cache, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _nan_rows(rows: slice) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        feats = f["features"][()]
        feats[rows] = np.nan
        f["features"][...] = feats

    return edit


def _replace(name: str, data, **kw) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[name]
        f.create_dataset(name, data=data, **kw)

    return edit


def _narrow_features(f: h5py.File) -> None:
    shape = (*f["features"].shape[:2], 7)
    del f["features"]
    f.create_dataset("features", data=np.zeros(shape, np.float16))


def _external_link(f: h5py.File) -> None:
    del f["skipped"]
    f["skipped"] = h5py.ExternalLink("/usr/bin/bash", "/data")


def _external_storage(env: Env) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        labels = f["labels"][()]
        raw = env.tmp / "labels.raw"
        raw.write_bytes(labels.astype("<i8").tobytes())
        del f["labels"]
        f.create_dataset("labels", shape=labels.shape, dtype="<i8", external=[(str(raw), 0, labels.nbytes)])

    return edit


def _path_entry(value: str) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        paths = list(f["path"].asstr()[()])
        paths[0] = value
        del f["path"]
        f.create_dataset("path", data=paths, dtype=h5py.string_dtype("utf-8"))

    return edit


def _huge_attribute(f: h5py.File) -> None:
    f.attrs.create("notes", data=np.array(["x" * (20 << 20)], dtype=object), dtype=h5py.string_dtype())


def _train(env: Env, cache: Path, *extra: str) -> list[str]:
    return ["train-head", str(cache), "--out", str(env.tmp / "r"), *_TRAIN, *extra]


def _nan_weights(env: Env) -> list[str]:
    from fastall.features.backbone import load_backbone

    state = load_backbone("none")[0].state_dict()
    state["conv1.weight"] = torch.full_like(state["conv1.weight"], float("nan"))
    path = env.tmp / "nan.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)
    return ["extract", str(env.data), "--out", str(env.tmp / "n.h5"), *_EXTRACT, "--weights", str(path)]


def _fifo_cache_image(env: Env) -> list[str]:
    """The run's data with one cached image replaced by a named pipe, given to verify."""
    data = env.tmp / "data"
    shutil.copytree(env.data, data)
    image = _first_image(data)
    image.unlink()
    os.mkfifo(image)
    return ["verify", str(env.run), "--data", str(data), "--images", "100"]


def _fifo_csv(env: Env) -> list[str]:
    root = _tree_copy(env, "csv")
    csv = next(root.glob("validation_data/*.csv"))
    csv.unlink()
    os.mkfifo(csv)
    return ["scan", str(root.parent)]


def _fifo_given(env: Env) -> list[str]:
    (env.tmp / "cell.bmp").write_bytes(_bmp_bytes(_cell()))
    os.mkfifo(env.tmp / "pipe.bmp")
    out = str(env.tmp / "p.csv")
    return ["predict", str(env.run), str(env.tmp / "cell.bmp"), str(env.tmp / "pipe.bmp"), "--out", out]


def _linked(env: Env, link: str, target: Callable[[Path], Path]) -> list[str]:
    root = _generic(env, {"all": 4, "hem": 4})
    os.symlink(target(root), root / link)
    return ["scan", str(root), "--patient-regex", r"(p\d+)_"]


def _hard_linked(env: Env, link: str, target: str) -> list[str]:
    root = _generic(env, {"all": 4, "hem": 4})
    os.link(root / target, root / link)
    return ["scan", str(root), "--patient-regex", r"(p\d+)_"]


def _outside(root: Path) -> Path:
    folder = root.parent / "elsewhere" / "usr"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"p7_{i}.bmp").write_bytes(_bmp_bytes(_cell(32)))
    return folder


def _class_outside(env: Env) -> list[str]:
    root = _generic(env, {"all": 4})
    os.symlink(_outside(root), root / "hem")
    return ["scan", str(root), "--patient-regex", r"(p\d+)_"]


def _duplicated(data: Path) -> None:
    """A copy of an 'all' image renamed into 'hem' (another class) and one into another 'all' patient."""
    base = next(data.rglob("training_data"))
    shutil.copy(_first_image(data), base / "fold_0" / "hem" / "UID_H2_9_9_hem.bmp")
    second = sorted(base.glob("fold_0/all/*.bmp"))[1]
    shutil.copy(second, base / "fold_1" / "all" / "UID_1_9_9_all.bmp")


def _dup_extract(env: Env) -> list[str]:
    data = env.tmp / "data"
    shutil.copytree(env.data, data)
    _duplicated(data)
    return ["extract", str(data), "--out", str(env.tmp / "d.h5"), *_EXTRACT, "--workers", "0"]


def _dup_cache(env: Env) -> Path:
    """A cache with byte-identical images across classes and patients (built once per corpus run)."""
    from fastall.features.extract import extract

    shared = env.cache.parent / "dup"
    if not (shared / "dup.h5").exists():
        shutil.rmtree(shared, ignore_errors=True)
        shutil.copytree(env.data, shared / "data")
        _duplicated(shared / "data")
        extract(
            shared / "data",
            shared / "dup.h5",
            views=2,
            image_size=32,
            weights="none",
            device="cpu",
            amp=False,
            workers=0,
        )
    return shared / "dup.h5"


def _lookalike(env: Env) -> list[str]:
    root = _tree_copy(env, "ids")
    first = sorted(root.glob("training_data/fold_0/all/*.bmp"))[0]
    patient = first.name.split("_")[1]
    shutil.copy(first, first.with_name(f"UID_00{patient}_9_9_all.bmp"))
    shutil.copy(first, first.with_name(f"UID_0{patient}_9_8_all.bmp"))
    return ["scan", str(root.parent)]


def _png_header(width: int, height: int, depth: int, color: int) -> Callable[[Path], None]:
    """A PNG whose header says ``width x height`` (the pixel data is never reached: it is refused first)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def write(path: Path) -> None:
        ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
        body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)

    return write


def _eps(path: Path) -> None:
    path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto showpage\n")


def _gif(path: Path) -> None:
    Image.fromarray(_cell()).save(path, format="GIF")


def _predict_out(env: Env, out: str) -> list[str]:
    (env.tmp / "cell.bmp").write_bytes(_bmp_bytes(_cell()))
    return ["predict", str(env.run), str(env.tmp / "cell.bmp"), "--out", str(env.tmp / out)]


def _out_is_input(env: Env) -> list[str]:
    cell = env.tmp / "cell.dat"
    cell.write_bytes(_bmp_bytes(_cell()))
    return ["predict", str(env.run), str(cell), "--out", str(cell)]


def _sweep_over_run(env: Env) -> list[str]:
    run = env.tmp / "run"
    shutil.copytree(env.run, run)
    return ["sweep", str(env.cache), "--out", str(run), "--overwrite", "--grid", "lr=1e-4", "--folds", "2"]


CASES += [
    Case(
        "content",
        "image rewritten with other pixels of the same byte size (extract said 'nothing to do')",
        lambda e: _stale(e),
        fragments=("1 image(s) changed since they were cached", "UID_", "--update"),
    ),
    Case(
        "content",
        "the same, with --update: only the changed image is recomputed",
        lambda e: _stale(e, "--update"),
        expect="reported",
        fragments=("--update: 1 changed image(s)", "1 done", "resumed"),
        show="--update:",
    ),
    Case(
        "content",
        "image rewritten keeping its old mtime, found by --verify-content",
        lambda e: _stale(e, "--verify-content", keep_mtime=True),
        fragments=("1 image(s) changed since they were cached",),
    ),
    Case(
        "content",
        "every file touched, content unchanged: still nothing to do",
        lambda e: _stale(e, touch=True),
        expect="reported",
        fragments=("same content (checked by hash)", "nothing to do"),
        show="same content",
    ),
    Case(
        "content",
        "cache from fastall 0.1 without content hashes (the size check, and a note)",
        _old_cache,
        expect="reported",
        fragments=("records no content hashes", "nothing to do"),
        show="records no content hashes",
    ),
    Case(
        "NaN",
        "cache with NaN features, given to train-head",
        lambda e: _train(e, _edit_cache(e, _nan_rows(slice(0, 1)))),
        fragments=("1 of", "non-finite features"),
    ),
    Case(
        "NaN",
        "cache that is all NaN",
        lambda e: _train(e, _edit_cache(e, _nan_rows(slice(None)))),
        fragments=("non-finite features",),
    ),
    Case("NaN", "train-head --lr inf", lambda e: _train(e, e.cache, "--lr", "inf"), fragments=("lr inf",)),
    Case(
        "NaN", "train-head --lr 1e30", lambda e: _train(e, e.cache, "--lr", "1e30"), fragments=("lr 1e+30",)
    ),
    Case(
        "NaN",
        "train-head --weight-decay inf",
        lambda e: _train(e, e.cache, "--weight-decay", "inf"),
        fragments=("weight_decay inf",),
    ),
    Case(
        "NaN",
        "extract with a state dict full of NaN (wrote a 100% NaN cache)",
        _nan_weights,
        fragments=("non-finite features", "NaN"),
    ),
    Case(
        "NaN",
        'sweep --grid "lr=inf" (recommended --lr inf)',
        lambda e: ["sweep", str(e.cache), "--out", str(e.tmp / "s"), "--grid", "lr=inf", "--folds", "2"],
        fragments=("lr inf",),
    ),
    Case(
        "NaN",
        'sweep --grid "lr=1e-4,inf" (ranked the diverged head at 52.5%)',
        lambda e: ["sweep", str(e.cache), "--out", str(e.tmp / "s"), "--grid", "lr=1e-4,inf", "--folds", "2"],
        fragments=("lr inf",),
    ),
    Case(
        "FIFO",
        "named pipe given to predict directly (said 'no such file or folder')",
        _fifo_given,
        expect="reported",
        fragments=("pipe.bmp", "named pipe (FIFO)"),
        show="named pipe",
    ),
    Case(
        "FIFO",
        "cache path naming a named pipe, given to verify (hung)",
        _fifo_cache_image,
        fragments=("named pipe (FIFO)",),
    ),
    Case("FIFO", "labels CSV that is a named pipe (hung)", _fifo_csv, fragments=("named pipe (FIFO)",)),
    Case(
        "symlink",
        "folder symlink out of the data root (ln -s /usr DATA/all/usr)",
        lambda e: _linked(e, "all/usr", _outside),
        expect="reported",
        fragments=("all/usr", "not followed"),
        show="not followed",
    ),
    Case(
        "symlink",
        "folder symlink to another class (DATA/all/hemlink -> ../hem)",
        lambda e: _linked(e, "all/hemlink", lambda root: Path("../hem")),
        expect="reported",
        fragments=("all/hemlink", "not followed"),
        show="not followed",
    ),
    Case(
        "symlink",
        "file symlink to another class (all/p9_9.bmp -> ../hem/p1_1.bmp): the one symlink rule",
        lambda e: _linked(e, "all/p9_9.bmp", lambda root: Path("../hem/p1_1.bmp")),
        expect="reported",
        fragments=("all/p9_9.bmp", "not followed"),
        show="not followed",
    ),
    Case(
        "symlink",
        "file symlink out of the data root (all/p9_9.bmp -> /elsewhere/usr/p7_0.bmp)",
        lambda e: _linked(e, "all/p9_9.bmp", lambda root: _outside(root) / "p7_0.bmp"),
        expect="reported",
        fragments=("all/p9_9.bmp", "not followed"),
        show="not followed",
    ),
    Case(
        "symlink",
        "one file reached under two classes through a hard link (all/p9_9.bmp = hem/p1_1.bmp)",
        lambda e: _hard_linked(e, "all/p9_9.bmp", "hem/p1_1.bmp"),
        fragments=("two labels",),
    ),
    Case(
        "symlink",
        "class folder that is a symlink out of the data root",
        _class_outside,
        fragments=("outside the data root",),
    ),
    Case(
        "duplicates",
        "identical bytes under two classes and two patients (a renamed copy)",
        _dup_extract,
        expect="reported",
        fragments=("byte-identical copies across patients or classes", "--dedupe"),
        show="byte-identical",
    ),
    Case(
        "duplicates",
        "patient IDs differing only in leading zeros (UID_003 / UID_03 / UID_3)",
        _lookalike,
        expect="reported",
        fragments=("leading zeros",),
        show="leading zeros",
    ),
    Case(
        "duplicates",
        "train-head on a cache with duplicates: warned",
        lambda e: _train(e, _dup_cache(e)),
        expect="reported",
        fragments=("byte-identical copies",),
        show="byte-identical",
    ),
    Case(
        "duplicates",
        "train-head --dedupe keeps one copy",
        lambda e: _train(e, _dup_cache(e), "--dedupe"),
        expect="reported",
        fragments=("--dedupe: kept one copy",),
        show="--dedupe",
    ),
    Case(
        "cache",
        "features [N, V, 7] with a feature_dim attribute of 2048",
        lambda e: _train(e, _edit_cache(e, _narrow_features)),
        fragments=("7-dimensional", "2048"),
    ),
    Case(
        "cache",
        "HDF5 external link (one pointed at /usr/bin/bash)",
        lambda e: _train(e, _edit_cache(e, _external_link)),
        fragments=("external link", "/usr/bin/bash"),
    ),
    Case(
        "cache",
        "HDF5 external raw storage",
        lambda e: _train(e, _edit_cache(e, _external_storage(e))),
        fragments=("external file",),
    ),
    Case(
        "cache",
        "a class name with no images (gave a 3-output head)",
        lambda e: _train(
            e, _edit_cache(e, _replace("class_names", ["hem", "all", "ghost"], dtype=h5py.string_dtype()))
        ),
        fragments=("'ghost'", "no images"),
    ),
    Case(
        "cache",
        "empty 'done' dataset",
        lambda e: _train(e, _edit_cache(e, _replace("done", np.zeros(0, bool)))),
        fragments=("'done' has shape (0,)",),
    ),
    Case(
        "cache",
        "path entry ../../../../etc/passwd, given to verify",
        lambda e: [
            "verify",
            str(e.run),
            "--cache",
            str(_edit_cache(e, _path_entry("../../../../etc/passwd"))),
        ],
        fragments=("leaves the data root",),
    ),
    Case(
        "cache",
        "path entry /etc/passwd, given to verify",
        lambda e: ["verify", str(e.run), "--cache", str(_edit_cache(e, _path_entry("/etc/passwd")))],
        fragments=("'/etc/passwd' leaves the data root",),
    ),
    Case(
        "cache",
        "a 20 MiB cache attribute (a 300 MB one tripled train-head's memory)",
        lambda e: _train(e, _edit_cache(e, _huge_attribute)),
        fragments=("attribute 'notes'", "limit of 1 MiB"),
    ),
    Case(
        "image",
        "16-bit 7999x7999 PNG of a few bytes (decoded at 2.27 GB)",
        lambda e: _predict(e, "deep.png", _png_header(7999, 7999, 16, 0)),
        fragments=("over the limit of 16,777,216", "--max-pixels"),
    ),
    Case(
        "image",
        "20000x10000 PNG header, over Pillow's own bomb limit too (refused by Pillow at open)",
        lambda e: _predict(e, "huge.png", _png_header(20000, 10000, 8, 2)),
        fragments=("over the limit of 16,777,216", "--max-pixels"),
    ),
    Case(
        "image",
        "3200x3200 RGBA image, under the pixel limit, over the decode memory budget",
        lambda e: _predict(e, "rgba.png", _png_header(3200, 3200, 8, 6)),
        fragments=("MiB to decode", "budget of 256 MiB"),
    ),
    Case(
        "image",
        "the pixel limit set with `fastall --max-pixels`",
        lambda e: [
            "--max-pixels",
            "1000",
            *_predict(e, "cell.bmp", lambda p: p.write_bytes(_bmp_bytes(_cell()))),
        ],
        fragments=("over the limit of 1,000",),
    ),
    Case(
        "image",
        "EPS file named .bmp (reached Ghostscript)",
        lambda e: _predict(e, "eps.bmp", _eps),
        fragments=("BMP, PNG, JPEG or TIFF",),
    ),
    Case(
        "image",
        "GIF named .png (a format fastall does not document)",
        lambda e: _predict(e, "gif.png", _gif),
        fragments=("BMP, PNG, JPEG or TIFF",),
    ),
    Case(
        "range",
        "bench --image-size 0",
        lambda e: ["bench", "--image-size", "0", "--images", "1", "--iters", "1", "--batch-sizes", "1"],
        fragments=("--image-size",),
    ),
    Case(
        "range",
        "train-head --hidden 100000000000 (hit DefaultCPUAllocator)",
        lambda e: _train(e, e.cache, "--hidden", "100000000000"),
        fragments=("hidden 100000000000",),
    ),
    Case(
        "small",
        "Ctrl-C in sweep (simulated; said completed work was kept)",
        lambda e: ["sweep", str(e.cache), "--out", str(e.tmp / "s"), "--grid", "lr=1e-4", "--folds", "2"],
        fragments=("interrupted; no sweep folder was written",),
        env=(("FASTALL_TEST_INTERRUPT_AT", "run-folder"),),
    ),
    Case(
        "small",
        "verify --images 0",
        lambda e: ["verify", str(e.run), "--images", "0"],
        fragments=("--images",),
    ),
    Case(
        "small",
        "verify --images -5",
        lambda e: ["verify", str(e.run), "--images", "-5"],
        fragments=("--images",),
    ),
    Case(
        "small",
        "export --images 0",
        lambda e: ["export", str(e.run), "--out", str(e.tmp / "m.pt"), "--images", "0"],
        fragments=("--images",),
    ),
    Case(
        "small",
        "extract --views 1000 (warned before the work; here the cache has other settings)",
        lambda e: ["extract", str(e.data), "--out", str(e.cache), *_EXTRACT[2:], "--views", "1000"],
        expect="reported",
        fragments=("--views 1000", "backbone forwards", "GiB"),
        show="--views 1000",
    ),
    Case(
        "small",
        'sweep --grid "epochs=1e9"',
        lambda e: ["sweep", str(e.cache), "--out", str(e.tmp / "s"), "--grid", "epochs=1e9", "--folds", "2"],
        fragments=("epochs 1000000000",),
    ),
    Case(
        "small",
        "--weights DIR (said 'file not found')",
        lambda e: ["extract", str(e.data), "--out", str(e.tmp / "w.h5"), "--weights", str(e.tmp)],
        fragments=("is a folder, not a weights file",),
    ),
    Case(
        "small",
        "a text file as --weights (said '(101)')",
        lambda e: [
            "extract",
            str(e.data),
            "--out",
            str(e.tmp / "w.h5"),
            "--weights",
            str((e.tmp / "w.pth").write_text("hello\n") and e.tmp / "w.pth"),
        ],
        fragments=("not a PyTorch weights file",),
    ),
    Case(
        "small",
        "predict --out existing.png (overwrote an image with CSV)",
        lambda e: _predict_out(e, "existing.png"),
        fragments=("image extension",),
    ),
    Case(
        "small",
        "predict --out that is one of the inputs",
        _out_is_input,
        fragments=("one of the inputs",),
    ),
    Case(
        "small",
        "sweep --overwrite onto a train-head run folder (head.pt was lost)",
        _sweep_over_run,
        fragments=("fastall-run", "not a fastall-sweep"),
    ),
]


def _resnet18_weights(env: Env) -> Path:
    from fastall.features.backbone import load_backbone

    path = env.tmp / "resnet18.pth"
    torch.save(load_backbone("none", backbone="resnet18")[0].state_dict(), path)
    return path


def _with_patients(env: Env, name: str, rename: Callable[[list, np.ndarray, list], list]) -> Path:
    """The env cache rewritten to ``name`` with ``rename(patients, labels, class_names)`` as its patients."""
    from fastall.features.cache import ImageRows, read_cache, write_cache

    fc = read_cache(env.cache)
    return write_cache(
        env.tmp / name,
        features=fc.features,
        rows=ImageRows(
            fc.labels, rename(list(fc.patients), fc.labels, fc.class_names), list(fc.paths), list(fc.sources)
        ),
        class_names=fc.class_names,
        view_params=fc.view_params,
        view_param_names=fc.view_param_names,
        key_params=fc.key_params,
        provenance={},
    )


def _two_patients_cache(env: Env) -> Path:
    """The env cache with its patients merged into two per class: 2 folds leave one per class to train on."""

    def merge(patients: list, labels: np.ndarray, names: list) -> list:
        order = {p: i for i, p in enumerate(dict.fromkeys(patients))}
        return [f"{names[y]}-{order[p] % 2}" for p, y in zip(patients, labels, strict=True)]

    return _with_patients(env, "two-patients.h5", merge)


def _other_patients_cache(env: Env) -> Path:
    return _with_patients(env, "other.h5", lambda patients, *_: ["someone-else", *patients[1:]])


def _encoder_args(env: Env, *extra: str) -> list[str]:
    return ["extract", str(env.data), "--out", str(env.tmp / "c.h5"), "--device", "cpu", *extra]


def _text_safetensors(env: Env) -> Path:
    path = env.tmp / "weights.safetensors"
    path.write_text("not weights\n")
    return path


# --- issue 22: the positive class, patients from a file ----------------------------------------------------


def _run_without_positive(env: Env) -> Path:
    """A copy of the run whose head records no positive class (two classes, neither named)."""
    from tests.e2e_helpers import edit_head

    run = env.tmp / "no-positive"
    shutil.copytree(env.run, run)
    edit_head(run, positive_class=None)
    return run


def _cells_as(env: Env, names: dict[str, str]) -> Path:
    """The env's images under new class folders: ``{"blast": "all", "normal": "hem"}``."""
    root = env.tmp / "renamed"
    for new, old in names.items():
        (root / new).mkdir(parents=True)
        for i, path in enumerate(sorted(env.data.glob(f"**/{old}/*.bmp"))[:4]):
            shutil.copy(path, root / new / f"p{i % 2}_{i}.bmp")
    return root


def _patients_csv(env: Env, lines: list[str], classes: dict[str, int] | None = None) -> list[str]:
    root = _generic(env, classes or {"all": 4, "hem": 4})
    table = env.tmp / "patients.csv"
    table.write_text("\n".join(lines) + "\n")
    return ["scan", str(root), "--patients", str(table), "--no-inspect"]


CASES += [
    Case(
        "positive class",
        "train-head --positive naming no class of the cache",
        lambda e: ["train-head", str(e.cache), "--out", str(e.tmp / "r"), "--positive", "blast"],
        fragments=("--positive 'blast' is not a class", "hem, all"),
    ),
    Case(
        "positive class",
        "train-head --positive in the wrong case (ALL for all)",
        lambda e: ["train-head", str(e.cache), "--out", str(e.tmp / "r"), "--positive", "ALL"],
        fragments=("case-sensitive: did you mean 'all'",),
    ),
    Case(
        "positive class",
        "extract --positive naming no class of the data",
        lambda e: [
            "extract",
            str(e.data),
            "--out",
            str(e.tmp / "c.h5"),
            "--weights",
            "none",
            "--positive",
            "x",
        ],
        fragments=("--positive 'x' is not a class",),
    ),
    Case(
        "positive class",
        "evaluate --threshold sens=0.9 with a run that names no positive class",
        lambda e: [
            "evaluate",
            str(_run_without_positive(e)),
            str(e.data),
            "--out",
            str(e.tmp / "ev"),
            "--threshold",
            "sens=0.9",
        ],  # fmt: skip
        fragments=("needs a positive class", "--positive"),
    ),
    Case(
        "positive class",
        "evaluate --threshold 0.3 (a cut on P(positive)) with a run that names none",
        lambda e: [
            "evaluate",
            str(_run_without_positive(e)),
            str(e.data),
            "--out",
            str(e.tmp / "ev"),
            "--threshold",
            "0.3",
        ],  # fmt: skip
        fragments=("cut on P(positive class)", "--positive"),
    ),
    Case(
        "positive class",
        "evaluate --classes mapping the disease class onto the run's normal class (a swap)",
        lambda e: [
            "evaluate",
            str(e.run),
            str(_cells_as(e, {"blast": "all", "normal": "hem"})),
            "--out",
            str(e.tmp / "ev"),
            "--classes",
            "blast=hem,normal=all",
        ],  # fmt: skip
        fragments=("swap sensitivity and specificity", "--classes blast=all"),
    ),
    Case(
        "positive class",
        "evaluate --positive disagreeing with the run's recorded positive class",
        lambda e: ["evaluate", str(e.run), str(e.data), "--out", str(e.tmp / "ev"), "--positive", "hem"],
        fragments=("disagrees with the run, whose positive class is 'all'",),
    ),
    Case(
        "positive class",
        "report --positive disagreeing with the run's recorded positive class",
        lambda e: ["report", str(e.run), "--positive", "hem"],
        fragments=("disagrees with the run, whose positive class is 'all'",),
    ),
    Case(
        "patients file",
        "--patients without a patient column",
        lambda e: _patients_csv(e, ["path,subject", "all/p0_0.bmp,A"]),
        fragments=("lacks column(s) patient", "expected path,patient"),
    ),
    Case(
        "patients file",
        "--patients naming an image that is not in the data set",
        lambda e: _patients_csv(e, ["path,patient", "all/p0_0.bmp,A", "all/gone.bmp,B"]),
        fragments=("lists all/gone.bmp, which is not an image of",),
    ),
    Case(
        "patients file",
        "--patients with a path that leaves the data root",
        lambda e: _patients_csv(e, ["path,patient", "../outside.bmp,A"]),
        fragments=("is not a path inside the data root",),
    ),
    Case(
        "patients file",
        "--patients listing one image twice",
        lambda e: _patients_csv(e, ["path,patient", "all/p0_0.bmp,A", "all/p0_0.bmp,B"]),
        fragments=("listed twice",),
    ),
    Case(
        "patients file",
        "--patients putting one patient under two classes",
        lambda e: _patients_csv(e, ["path,patient", "all/p0_0.bmp,A", "hem/p0_0.bmp,A"]),
        expect="reported",
        fragments=("patient A has images under 2 classes", "majority"),
        show="patient A",
    ),
    Case(
        "patients file",
        "--patients that lists only some images (the rest stay their own group)",
        lambda e: _patients_csv(e, ["path,patient", "all/p0_0.bmp,A"]),
        expect="reported",
        fragments=("not in --patients", "each is its own group"),
        show="not in --patients",
    ),
]


CASES += [
    Case(
        "encoders",
        "--backbone timm:NAME that timm does not know",
        lambda e: _encoder_args(e, "--backbone", "timm:no_such_net", "--weights", "none"),
        fragments=("no timm architecture 'no_such_net'",),
    ),
    Case(
        "encoders",
        "--weights hub offline with nothing cached (the file to fetch, where to put it)",
        lambda e: _encoder_args(e, "--backbone", "dinobloom-s", "--weights", "hub"),
        fragments=(
            "1aurent/vit_small_patch14_224.dinobloom/resolve/main/model.safetensors",
            "--weights PATH",
        ),
        env=(("HF_HUB_OFFLINE", "1"),),
    ),
    Case(
        "encoders",
        "--weights of another architecture for a timm encoder (the first mismatching key)",
        lambda e: _encoder_args(e, "--backbone", "dinobloom-s", "--weights", str(_resnet18_weights(e))),
        fragments=("not a DinoBloom-S state dict", "first mismatching key 'conv1.weight'"),
    ),
    Case(
        "encoders",
        "a .safetensors weights file that is not one",
        lambda e: _encoder_args(e, "--backbone", "dinobloom-s", "--weights", str(_text_safetensors(e))),
        fragments=("not a safetensors weights file",),
    ),
    Case(
        "encoders",
        "--pool for a CNN",
        lambda e: _encoder_args(e, "--weights", "none", "--pool", "cls"),
        fragments=("token pooling applies to timm ViTs",),
    ),
    Case(
        "encoders",
        "--layers with a stage that does not exist",
        lambda e: _encoder_args(e, "--weights", "none", "--layers", "layer3,layer5"),
        fragments=("give distinct stage names among layer1, layer2, layer3, layer4",),
    ),
    Case(
        "encoders",
        "--layers for a backbone without declared stages",
        lambda e: _encoder_args(e, "--backbone", "vit_b_16", "--weights", "none", "--layers", "layer3"),
        fragments=("vit_b_16 has no declared stages",),
    ),
]


CASES += [
    Case(
        "probe",
        "probe --ks 0,5 (a kNN with no neighbour)",
        lambda e: ["probe", str(e.cache), "--out", str(e.tmp / "p"), "--no-mlp", "--ks", "0,5"],
        fragments=("every k must be at least 1",),
    ),
    Case(
        "probe",
        "probe --ks five",
        lambda e: ["probe", str(e.cache), "--out", str(e.tmp / "p"), "--no-mlp", "--ks", "five"],
        fragments=("comma-separated whole numbers",),
    ),
    Case(
        "probe",
        "probe --folds 10 on a class with fewer patients",
        lambda e: ["probe", str(e.cache), "--out", str(e.tmp / "p"), "--no-mlp", "--folds", "10"],
        fragments=("folds",),
    ),
    Case(
        "probe",
        "probe on a truncated cache file",
        lambda e: ["probe", str(_truncate(e)), "--out", str(e.tmp / "p")],
        fragments=("cut.h5",),
    ),
    Case(
        "probe",
        "probe on a single-class cache",
        lambda e: ["probe", str(_one_class_cache(e)), "--out", str(e.tmp / "p"), "--no-mlp"],
        fragments=("class",),
    ),
    Case(
        "probe",
        "probe --out onto an existing run folder without --overwrite",
        lambda e: ["probe", str(e.cache), "--out", str(e.run), "--no-mlp"],
        fragments=("fastall-run",),
    ),
    Case(
        "probe",
        "probe --overwrite onto a train-head run folder (never replaced)",
        lambda e: ["probe", str(e.cache), "--out", str(e.run), "--no-mlp", "--overwrite"],
        fragments=("fastall-run", "not a fastall-probe"),
    ),
]

from tests.bad_inputs_round3 import ROUND3  # noqa: E402  (its cases use the helpers above)

CASES += ROUND3

from tests.bad_inputs_smears import SMEAR_CASES  # noqa: E402

CASES += SMEAR_CASES
