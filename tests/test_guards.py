"""Issue 18, the library side of the bad-input corpus: duplicates and look-alike patients, diverged heads, the
cache reader's structural checks, the walker's symlink fence, decode limits, ranges and the CLI's mapping of
allocator failures and Ctrl-C."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import click
import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from featcache import make_feature_cache
from PIL import Image

from fastall.cli.group import FastallGroup
from fastall.data import images
from fastall.data.duplicates import dedupe_rows, duplicate_groups, duplicate_warning, lookalike_patients
from fastall.data.walk import walk_files
from fastall.errors import CacheError, FastallError
from fastall.features.cache import read_cache
from fastall.training import sweep as sweep_module
from fastall.training import train_head as train_head_module
from fastall.training.config import HeadConfig
from fastall.training.divergence import diverged, metrics_or_nan
from fastall.training.hygiene import check_rows
from fastall.training.splits import Splits, audit_splits


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    return make_feature_cache(
        tmp_path_factory.mktemp("c") / "c.h5", patients=(4, 4), images_per_patient=4, dim=16
    )


def test_lookalike_patients_and_duplicate_groups():
    assert lookalike_patients(["003", "03", "3", "H3", "H03", "12", "120"]) == [
        ["003", "03", "3"],
        ["H03", "H3"],
    ]
    hashes = ["a", "b", "a", "c", "c", "", ""]
    labels = [1, 0, 0, 1, 1, 0, 0]
    patients = ["1", "H1", "H2", "2", "2", "x", "y"]
    groups = duplicate_groups(hashes, labels, patients)
    assert [(g.rows, g.across_classes, g.across_patients) for g in groups] == [
        ([0, 2], True, True),
        ([3, 4], False, False),
    ]
    assert "1 across classes" in duplicate_warning(groups, [f"f{i}" for i in range(7)])
    assert duplicate_warning(groups[1:], [f"f{i}" for i in range(7)]) is None  # one patient's own copies
    keep, dropped, conflicting = dedupe_rows(groups, labels, 7)
    assert keep == [1, 3, 5, 6] and (dropped, conflicting) == (1, 2)


def test_audit_counts_identical_content_across_splits():
    splits = Splits(
        test=np.array([6]),
        pool=np.arange(6),
        folds=[(np.array([0, 1, 2]), np.array([3, 4, 5]))],
        test_mode="holdout",
        seed=0,
    )
    patients = np.array(["a", "a", "b", "c", "c", "d", "e"], dtype=object)
    hashes = np.array(["h1", "h2", "h3", "h1", "h9", "h3", "h2"], dtype=object)
    row = audit_splits(splits, patients, hashes)[0]
    assert row["identical_content_val"] == 2 and row["identical_content_test"] == 1
    assert "identical_content_val" not in audit_splits(splits, patients)[0]


def test_check_rows_refuses_an_empty_class_and_dedupes(small_cache):
    cache = read_cache(small_cache)
    with pytest.raises(FastallError, match="'ghost'.*no images"):
        check_rows(replace(cache, class_names=[*cache.class_names, "ghost"]))
    with pytest.raises(FastallError, match="--dedupe needs the content hashes"):
        check_rows(cache, dedupe=True)
    hashes = np.array([f"h{i}" for i in range(cache.n_images)], dtype=object)
    hashes[1] = hashes[0]
    cache = replace(cache, content_hashes=hashes)
    kept, notes = check_rows(cache, dedupe=True)
    assert kept.n_images == cache.n_images - 1 and "dropped 1 duplicate(s)" in notes[0]
    assert kept.features.shape[0] == kept.n_images == len(kept.paths) == len(kept.content_hashes)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": math.nan}, "lr nan"),
        ({"lr": 2.0}, "lr 2.0"),
        ({"weight_decay": math.inf}, "weight_decay inf"),
        ({"epochs": 10**9}, "epochs 1000000000"),
        ({"hidden": 10**11}, "hidden 100000000000"),
        ({"batch_size": 10**7}, "batch_size 10000000"),
    ],
)
def test_head_config_refuses_non_finite_and_absurd_values(change, message):
    with pytest.raises(FastallError, match=message):
        replace(HeadConfig(), **change).check()


def _poison(monkeypatch, module, which):
    """Make the engine return NaN outputs for the heads ``which(result)`` picks."""
    real = module.train_stacks

    def fake(*args, **kwargs):
        results = real(*args, **kwargs)
        for r in results:
            if which(r):
                r.probs = {k: np.full_like(v, np.nan) for k, v in r.probs.items()}
                r.val_loss = math.nan if r.val_loss is not None else None
        return results

    monkeypatch.setattr(module, "train_stacks", fake)


def test_a_diverged_configuration_is_marked_and_never_ranked_or_recommended(
    small_cache, tmp_path, monkeypatch
):
    _poison(monkeypatch, sweep_module, lambda r: r.config == 0)
    result = sweep_module.sweep(
        small_cache, tmp_path / "s", grid="lr=1e-4,3e-4", folds=2, test="none", device="cpu", progress=False
    )
    table = result.results["configs"]
    assert [row["config"] for row in table] == [1, 0] and table[1]["diverged"] and not table[0]["diverged"]
    assert result.best["config"] == 1 and "--lr 0.0003" in result.best["command"]
    assert "diverged" in (tmp_path / "s" / "results.csv").read_text().splitlines()[0]
    _poison(monkeypatch, sweep_module, lambda r: True)
    with pytest.raises(FastallError, match="every configuration diverged"):
        sweep_module.sweep(
            small_cache, tmp_path / "s2", grid="lr=1e-4", folds=2, device="cpu", progress=False
        )


def test_train_head_marks_a_diverged_fold_and_refuses_a_diverged_final_head(
    small_cache, tmp_path, monkeypatch
):
    _poison(monkeypatch, train_head_module, lambda r: r.fold == 0 and not r.final)
    run = train_head_module.train_head(
        small_cache, tmp_path / "r", folds=2, epochs=1, device="cpu", progress=False
    )
    folds = json.loads((tmp_path / "r" / "metrics.json").read_text())["folds"]
    assert folds[0]["diverged"] and folds[0]["accuracy"] is None and not folds[1]["diverged"]
    assert run.summary["accuracy"] == folds[1]["accuracy"]
    monkeypatch.undo()
    _poison(monkeypatch, train_head_module, lambda r: r.final)
    with pytest.raises(FastallError, match="final head became NaN/Inf.*nothing was written"):
        train_head_module.train_head(
            small_cache, tmp_path / "r2", folds=2, epochs=1, device="cpu", progress=False
        )
    assert not (tmp_path / "r2").exists()


def test_diverged_and_nan_metrics():
    from fastall.training.config import HeadResult

    ok = HeadResult(0, 0, False, {}, 1, 1, 0.5, [0.5], [1e-4], {"val": np.full((2, 2), 0.5)})
    assert not diverged(ok)
    assert diverged(replace(ok, val_loss_history=[0.5, math.inf]))
    assert diverged(replace(ok, probs={"val": np.array([[np.nan, 1.0]])}))
    m = metrics_or_nan(np.array([0, 1]), np.array([[np.nan, 1], [0, 1]]), 2)
    assert m["diverged"] and math.isnan(m["accuracy"]) and math.isnan(m["log_loss"])


def _copy_cache(src: Path, dest: Path, edit) -> Path:
    shutil.copy(src, dest)
    with h5py.File(dest, "r+") as f:
        edit(f, dest)
    return dest


def test_the_reader_refuses_soft_links_and_virtual_datasets(small_cache, tmp_path):
    def soft(f, _):
        del f["skipped"]
        f["skipped"] = h5py.SoftLink("/labels")

    def virtual(f, dest):
        other = dest.with_name("other.h5")
        labels = f["labels"][()]
        with h5py.File(other, "w") as g:
            g["x"] = labels
        layout = h5py.VirtualLayout(shape=labels.shape, dtype=labels.dtype)
        layout[:] = h5py.VirtualSource(str(other), "x", shape=labels.shape)
        del f["labels"]
        f.create_virtual_dataset("labels", layout)

    with pytest.raises(CacheError, match="soft link"):
        read_cache(_copy_cache(small_cache, tmp_path / "a.h5", soft))
    with pytest.raises(CacheError, match="virtual dataset"):
        read_cache(_copy_cache(small_cache, tmp_path / "b.h5", virtual))


def test_rows_altered_behind_the_key_are_refused(small_cache, tmp_path):
    from fastall.data.fingerprint import Stamp
    from fastall.features.cache import ImageRows, write_cache

    fc = read_cache(small_cache)
    stamps = [Stamp(f"{i:032x}", 1, 1) for i in range(fc.n_images)]
    fields = {n: getattr(fc, n) for n in ("features", "class_names", "view_params", "view_param_names")}
    rows = ImageRows.of(fc, stamps)
    path = write_cache(tmp_path / "h.h5", **fields, rows=rows, key_params=fc.key_params, provenance={})
    assert read_cache(path).content_hashes[3] == f"{3:032x}"

    def relabel(f, _):
        labels = f["labels"][()]
        labels[0] = 1 - labels[0]
        f["labels"][...] = labels

    with pytest.raises(CacheError, match="content_fingerprint"):
        read_cache(_copy_cache(path, tmp_path / "r.h5", relabel))


def test_walker_does_not_follow_folder_symlinks_out_of_its_fence(tmp_path):
    (tmp_path / "root" / "all" / "sub").mkdir(parents=True)
    (tmp_path / "root" / "hem").mkdir()
    (tmp_path / "outside").mkdir()
    for rel in ("root/all/a.bmp", "root/all/sub/b.bmp", "root/hem/c.bmp", "outside/d.bmp"):
        (tmp_path / rel).write_bytes(b"x")
    os.symlink(tmp_path / "outside", tmp_path / "root" / "all" / "usr")
    os.symlink("../hem", tmp_path / "root" / "all" / "hemlink")
    os.symlink("sub", tmp_path / "root" / "all" / "inner")
    problems: list[tuple[str, str]] = []
    found = walk_files(
        tmp_path / "root" / "all",
        lambda p, m: problems.append((Path(p).name, m)),
        inside=tmp_path / "root" / "all",
    )
    assert sorted(p.name for p in found) == ["a.bmp", "b.bmp"]
    assert sorted(name for name, m in problems if "not followed" in m) == ["hemlink", "usr"]
    unfenced = list(walk_files(tmp_path / "root" / "all", lambda p, m: None))
    assert "d.bmp" in {p.name for p in unfenced}


def test_decode_refuses_formats_fifos_and_over_budget_modes(tmp_path, monkeypatch):
    monkeypatch.delenv(images.MAX_PIXELS_ENV, raising=False)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.gif", format="GIF")
    with pytest.raises(images.BadImageError, match="BMP, PNG, JPEG or TIFF"):
        images.decode_image(tmp_path / "a.gif")
    os.mkfifo(tmp_path / "pipe.bmp")
    with pytest.raises(images.BadImageError, match="named pipe"):
        images.decode_image(tmp_path / "pipe.bmp")
    Image.new("RGB", (10, 10)).save(tmp_path / "rgb.png")
    Image.new("RGBA", (10, 10)).save(tmp_path / "rgba.png")
    with images.pixel_limit(100):
        assert images.decode_image(tmp_path / "rgb.png").shape == (3, 10, 10)  # 14 B/px: within 16
        with pytest.raises(images.BadImageError, match="RGBA image needs about"):
            images.decode_image(tmp_path / "rgba.png")  # 27 B/px: over the budget
    assert images.get_max_pixels() == images.DEFAULT_MAX_PIXELS == 4096 * 4096


def test_predict_out_must_not_be_an_input_or_an_image(tmp_path):
    from fastall.inference.predict import check_out

    cell = tmp_path / "cell.dat"
    cell.write_bytes(b"x")
    with pytest.raises(FastallError, match="image extension"):
        check_out(tmp_path / "x.PNG", [cell])
    with pytest.raises(FastallError, match="one of the inputs"):
        check_out(cell, [tmp_path / "run", cell])
    assert check_out(tmp_path / "p.csv", [cell]) == tmp_path / "p.csv"
    os.symlink("loop.bmp", tmp_path / "loop.bmp")  # a symlink loop among the inputs is predict's to report
    assert check_out(tmp_path / "p.csv", [tmp_path / "loop.bmp"]) == tmp_path / "p.csv"


def test_a_folder_of_another_kind_is_never_replaced(tmp_path):
    from fastall.system.runfolder import atomic_folder

    run = tmp_path / "out"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"format": "fastall-run"}))
    (run / "head.pt").write_bytes(b"weights")
    with pytest.raises(FastallError, match="not a fastall-sweep"), atomic_folder(run, overwrite=True) as tmp:
        (tmp / "results.json").write_text(json.dumps({"format": "fastall-sweep"}))
    assert (run / "head.pt").read_bytes() == b"weights" and not list(tmp_path.glob("out.*"))


def _group(error: BaseException, name: str = "boom") -> click.Group:
    @click.group(cls=FastallGroup)
    def group() -> None:
        pass

    @group.command(name=name)
    def command() -> None:
        raise error

    return group


def test_allocator_failures_are_out_of_memory_and_ctrl_c_says_what_was_kept():
    text = (
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
    )
    text += "to allocate 819200000000000 bytes. Error code 12 (Cannot allocate memory)"
    result = CliRunner().invoke(_group(RuntimeError(text)), ["boom"])
    assert result.exit_code == 1 and "out of memory" in result.output and "762,939.5 GiB" in result.output
    assert "internal error" not in result.output
    result = CliRunner().invoke(_group(KeyboardInterrupt(), "extract"), ["extract"])
    assert result.exit_code == 130 and "finished batches are kept" in result.output
    result = CliRunner().invoke(_group(KeyboardInterrupt(), "sweep"), ["sweep"])
    assert "no sweep folder was written" in result.output and "kept" not in result.output
