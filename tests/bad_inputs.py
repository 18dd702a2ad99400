"""The bad-input corpus: every case builds its input in a temp folder and names the command that meets it.

Used by tests/test_hardening.py (each case ends in a one-line message, the right exit code, no traceback) and
by scripts/hardening_table.py (docs/hardening.md shows what the user sees, taken from a real run).
"""

from __future__ import annotations

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
        progress=False,
    )
    return out


def _truncate(env: Env) -> Path:
    path = env.tmp / "cut.h5"
    path.write_bytes(env.cache.read_bytes()[:4096])
    return path


def case_id(case: Case) -> str:
    return json.dumps(f"{case.category}: {case.name}")[1:-1]


def _resnet18_weights(env: Env) -> Path:
    from fastall.features.backbone import load_backbone

    path = env.tmp / "resnet18.pth"
    torch.save(load_backbone("none", backbone="resnet18")[0].state_dict(), path)
    return path


def _other_patients_cache(env: Env) -> Path:
    from fastall.features.cache import read_cache, write_cache

    fc = read_cache(env.cache)
    patients = list(fc.patients)
    patients[0] = "someone-else"
    return write_cache(
        env.tmp / "other.h5",
        features=fc.features,
        labels=fc.labels,
        class_names=fc.class_names,
        patients=patients,
        paths=list(fc.paths),
        sources=list(fc.sources),
        view_params=fc.view_params,
        view_param_names=fc.view_param_names,
        key_params=fc.key_params,
        provenance={},
    )
