"""`fastall predict`: one row per readable image, bad files reported one line each and skipped."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from e2e_helpers import shared_run
from PIL import Image

from fastall.cli import cli
from fastall.inference.artifacts import load_run
from fastall.inference.predict import predict_paths
from fastall.system.events import collecting


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    return shared_run(tmp_path_factory)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _predict(*args: str):
    return CliRunner().invoke(cli, ["predict", *args])


def _good_and_bad(folder: Path, source: Path) -> tuple[list[str], list[str]]:
    """Readable odd images and unreadable files; returns their names."""
    folder.mkdir()
    cell = np.asarray(Image.open(source).convert("RGB"))
    Image.fromarray(cell).save(folder / "name with spaces é.bmp")
    Image.fromarray(cell).save(folder / "png_named.bmp", format="PNG")
    Image.fromarray(cell).convert("L").save(folder / "grey.png")
    Image.fromarray(cell).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(cell[:1, :1]).save(folder / "one_pixel.bmp")
    (folder / "empty.bmp").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    (folder / "truncated.bmp").write_bytes((folder / "name with spaces é.bmp").read_bytes()[:200])
    os.symlink(folder / "loop_b.bmp", folder / "loop_a.bmp")
    os.symlink(folder / "loop_a.bmp", folder / "loop_b.bmp")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    good = ["name with spaces é.bmp", "png_named.bmp", "grey.png", "rgba.png", "one_pixel.bmp"]
    bad = ["empty.bmp", "text.jpg", "truncated.bmp", "loop_a.bmp", "loop_b.bmp"]
    return good, bad


def test_predict_writes_one_row_per_readable_image_and_reports_bad_ones(e2e, tmp_path):
    sample = next((e2e.data / "C-NMC_Leukemia" / "training_data").rglob("*.bmp"))
    good, bad = _good_and_bad(tmp_path / "mixed", sample)
    out = tmp_path / "preds.csv"
    result = _predict(
        str(e2e.run), str(e2e.data), str(tmp_path / "mixed"), "--out", str(out), "--batch-size", "4"
    )
    assert result.exit_code == 0, result.output
    n_data = len(list(e2e.data.rglob("*.bmp")))
    rows = _rows(out)
    assert len(rows) == n_data + len(good)
    assert {Path(r["path"]).name for r in rows} >= set(good)
    for row in rows:
        assert row["predicted_class"] in ("hem", "all")
        assert abs(float(row["p_hem"]) + float(row["p_all"]) - 1) < 1e-5
    skipped = _rows(tmp_path / "preds.skipped.csv")
    assert sorted(Path(r["path"]).name for r in skipped) == sorted(bad)
    for name in bad:
        lines = [line for line in result.stderr.splitlines() if name in line]
        assert lines and lines[0].startswith("skipped: ")
    assert "Traceback" not in result.output and f"{len(bad)} unreadable files skipped" in result.stdout


def test_no_skip_bad_stops_at_the_first_bad_file_and_writes_nothing(e2e, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(e2e.data / "C-NMC_Leukemia" / "training_data" / "fold_0", folder)
    (folder / "zz_empty.bmp").write_bytes(b"")
    result = _predict(str(e2e.run), str(folder), "--out", str(tmp_path / "p.csv"), "--no-skip-bad")
    assert result.exit_code == 1
    assert "zz_empty.bmp: empty file" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "p.csv").exists() and not list(tmp_path.glob("*.tmp"))


def test_nothing_readable_is_an_error(e2e, tmp_path):
    (tmp_path / "a.bmp").write_bytes(b"")
    result = _predict(
        str(e2e.run), str(tmp_path / "a.bmp"), str(tmp_path / "missing"), "--out", str(tmp_path / "p.csv")
    )
    assert result.exit_code == 1 and "none of the 1 image files could be read" in result.output
    assert "missing: no such file or folder" in result.output


def test_testing_data_and_tta(e2e, tmp_path):
    from fastall.data.synth import synthesize

    synthesize(
        tmp_path / "new", patients_per_class=1, images_per_patient=2, size=48, prelim=False, testing=True
    )
    testing = next((tmp_path / "new").rglob("testing_data"))
    n = len(list(testing.rglob("*.bmp")))
    assert n > 0
    plain, tta = tmp_path / "plain.csv", tmp_path / "tta.csv"
    assert _predict(str(e2e.run), str(testing), "--out", str(plain)).exit_code == 0
    result = _predict(str(e2e.run), str(testing), "--out", str(tta), "--tta", "3")
    assert result.exit_code == 0 and "3 views" in result.output
    a, b = _rows(plain), _rows(tta)
    assert len(a) == len(b) == n and [r["path"] for r in a] == [r["path"] for r in b]
    assert any(r["p_all"] != s["p_all"] for r, s in zip(a, b, strict=True))


def test_predict_from_an_exported_model_matches_the_run(e2e, tmp_path):
    folder = e2e.data / "C-NMC_Leukemia" / "training_data" / "fold_1"
    exported = CliRunner().invoke(
        cli, ["export", str(e2e.run), "--out", str(tmp_path / "m.pt"), "--precision", "fp32"]
    )
    assert exported.exit_code == 0, exported.output
    assert _predict(str(e2e.run), str(folder), "--out", str(tmp_path / "a.csv")).exit_code == 0
    assert _predict(str(tmp_path / "m.pt"), str(folder), "--out", str(tmp_path / "b.csv")).exit_code == 0
    run_rows, export_rows = _rows(tmp_path / "a.csv"), _rows(tmp_path / "b.csv")
    assert all(row.pop("ood") in ("0", "1") for row in run_rows)  # the run's training cache is at hand
    assert run_rows == export_rows


def test_stale_sidecar_is_removed_and_unwritable_output_refused(e2e, tmp_path):
    folder = e2e.data / "C-NMC_Leukemia" / "training_data" / "fold_2"
    (tmp_path / "p.skipped.csv").write_text("path,reason\nold,old\n")
    assert _predict(str(e2e.run), str(folder), "--out", str(tmp_path / "p.csv")).exit_code == 0
    assert not (tmp_path / "p.skipped.csv").exists()
    result = _predict(str(e2e.run), str(folder), "--out", str(tmp_path / "nowhere" / "p.csv"))
    assert result.exit_code == 1 and "cannot write" in result.output
    assert not (tmp_path / "nowhere").exists()


def test_predict_paths_library(e2e):
    model = load_run(e2e.run)
    reporter, events = collecting()
    preds = predict_paths(model, [e2e.data], batch_size=5, reporter=reporter)
    seen = [e.done for e in events if e.kind == "advance"]
    assert len(preds.paths) == preds.probs.shape[0] == seen[-1] and preds.skipped == []
    assert np.allclose(preds.probs.sum(1), 1)


def test_predict_int8_on_a_run_and_refused_on_an_fp32_export(e2e, tmp_path):
    folder = e2e.data / "C-NMC_Leukemia" / "training_data" / "fold_0"
    result = _predict(str(e2e.run), str(folder), "--out", str(tmp_path / "a.csv"), "--precision", "int8")
    assert result.exit_code == 0 and "int8" in result.stdout, result.output
    assert (
        CliRunner()
        .invoke(cli, ["export", str(e2e.run), "--out", str(tmp_path / "m.pt"), "--precision", "fp32"])
        .exit_code
        == 0
    )
    result = _predict(
        str(tmp_path / "m.pt"), str(folder), "--out", str(tmp_path / "b.csv"), "--precision", "int8"
    )
    assert result.exit_code == 1 and "no int8 state" in result.output
