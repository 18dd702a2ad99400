"""Dataset discovery: both layouts, patient IDs, the real manifest's figures, and every problem case."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import MANIFEST

from fastall.cli import cli
from fastall.data.discover import CNMC_CLASSES, PRELIM_CSV, PRELIM_DIR, Dataset, discover, parse_cnmc_name
from fastall.errors import FastallError


def _copy(synth_tree: Path, dest: Path) -> Path:
    shutil.copytree(synth_tree, dest, symlinks=True)
    return dest


def _scan(*args: str):
    result = CliRunner().invoke(cli, ["scan", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize(
    "name, expected",
    [
        ("UID_11_10_1_all.bmp", ("11", "all")),
        ("UID_H24_3_2_hem.bmp", ("H24", "hem")),
        ("UID_h3_12_1_hem.bmp", ("H3", "hem")),
        ("UID_24_1_1_ALL.BMP", ("24", "all")),
        ("UID_11_10_all.bmp", None),
        ("cell.bmp", None),
        ("UID_11_10_1_all.txt", None),
    ],
)
def test_parse_cnmc_name(name, expected):
    assert parse_cnmc_name(name) == expected


def test_synth_tree_discovery(synth_tree):
    ds = discover(synth_tree)
    assert ds.layout == "cnmc" and ds.class_names == CNMC_CLASSES == ["hem", "all"]
    assert not ds.problems and not ds.warnings
    assert ds.sources == ["fold_0", "fold_1", "fold_2", "prelim"]
    assert ds.records == sorted(ds.records, key=lambda r: (r.source, r.rel_path))
    files = sorted(
        p.relative_to(synth_tree).as_posix()
        for p in synth_tree.rglob("*.bmp")
        if "testing_data" not in p.parts
    )
    assert sorted(r.rel_path for r in ds.records) == files
    for r in ds.records:
        assert r.rel_path.startswith("C-NMC_Leukemia/") and r.path == synth_tree / r.rel_path
        assert r.class_name == CNMC_CLASSES[r.label] and r.patient.startswith("H") == (r.label == 0)
    folds = {}
    for r in ds.records:
        if r.source != "prelim":
            assert folds.setdefault(r.patient, r.source) == r.source
    with open(synth_tree / "C-NMC_Leukemia" / PRELIM_CSV, newline="") as fh:
        truth = {row["new_names"]: int(row["labels"]) for row in csv.DictReader(fh)}
    prelim = {r.path.name: r.label for r in ds.records if r.source == "prelim"}
    assert prelim == truth
    summary = json.loads(json.dumps(ds.summary()))
    assert summary["patients"] == 8 and summary["per_class"]["all"]["patients"] == 4
    assert summary["images"] == len(ds.records) == sum(ds.class_counts().values())
    ds.check(training=True)
    assert discover(synth_tree).records == ds.records


def test_testing_source_is_unlabelled(synth_tree):
    ds = discover(synth_tree, include=("prelim", "testing"))
    testing = [r for r in ds.records if r.source == "testing"]
    assert testing and all(r.label == -1 and r.class_name is None for r in testing)
    assert len({r.patient for r in testing}) == len(testing)
    assert ds.unlabelled() == testing and len(ds.labelled()) == len(ds.records) - len(testing)
    assert ds.summary()["unlabelled_images"] == len(testing)
    assert {r.source for r in discover(synth_tree, include="testing").records} == {
        "fold_0",
        "fold_1",
        "fold_2",
        "testing",
    }
    with pytest.raises(FastallError, match="unknown source"):
        discover(synth_tree, include=("prelim", "final"))


def test_tree_found_from_parents_and_from_itself(synth_tree, tmp_path):
    deep = tmp_path / "a" / "b c"
    _copy(synth_tree, deep)
    (tmp_path / "other").mkdir()
    from_parent = discover(tmp_path)
    assert from_parent.layout == "cnmc"
    assert all(r.rel_path.startswith("a/b c/C-NMC_Leukemia/") for r in from_parent.records)
    itself = discover(deep / "C-NMC_Leukemia")
    assert [r.rel_path for r in itself.records] == [
        r.rel_path.split("C-NMC_Leukemia/")[1] for r in from_parent.records
    ]
    training = discover(deep / "C-NMC_Leukemia" / "training_data")
    assert training.layout == "cnmc" and training.sources == ["fold_0", "fold_1", "fold_2"]
    assert any("training_data folder" in w for w in training.warnings)


def _generic(synth_tree: Path, root: Path, rename) -> Path:
    for i, src in enumerate(sorted((synth_tree / "C-NMC_Leukemia" / "training_data").rglob("*.bmp"))):
        patient, cls = parse_cnmc_name(src.name)
        dest = root / rename(cls, patient, i, src.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    return root


def test_generic_layout_with_cnmc_names(synth_tree, tmp_path):
    root = _generic(synth_tree, tmp_path / "g", lambda cls, p, i, name: f"{cls}/{name}")
    ds = discover(root)
    assert ds.layout == "generic" and ds.class_names == ["hem", "all"] and not ds.warnings
    assert ds.sources == ["all", "hem"]
    assert all(r.patient == parse_cnmc_name(r.path.name)[0] for r in ds.records)


def test_generic_layout_patient_regex_and_no_rule_warning(synth_tree, tmp_path):
    classes = {"all": "blast", "hem": "Normal"}
    root = _generic(
        synth_tree, tmp_path / "g", lambda cls, p, i, name: f"{classes[cls]}/patient {p}/çellule n°{i}.PNG"
    )
    (root / "blast" / "patient 1" / "notes.txt").write_text("x")
    (root / "zeta").mkdir()
    shutil.copy(next(root.rglob("*.PNG")), root / "zeta" / "odd.jpeg")
    ds = discover(root)
    assert ds.class_names == ["Normal", "blast", "zeta"]
    assert [ds.class_names[r.label] for r in ds.records] == [r.class_name for r in ds.records]
    assert any("patient-level splitting is impossible" in w for w in ds.warnings)
    assert len({r.patient for r in ds.records}) == len(ds.records)
    assert any(p.path.endswith("notes.txt") and "not an image" in p.message for p in ds.problems)

    ds = discover(root, patient_regex=r"patient (H?\d+)")
    assert not ds.warnings
    assert ds.patient_class_counts() == {"Normal": 3, "blast": 3, "zeta": 0}
    odd = [p for p in ds.problems if p.path.endswith("odd.jpeg")]
    assert odd and "does not match --patient-regex" in odd[0].message
    assert not any(r.path.name == "odd.jpeg" for r in ds.records)
    result = _scan(str(root), "--patient-regex", r"patient (H?\d+)", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["patients"] == 6


@pytest.mark.parametrize(
    "regex, message",
    [
        (r"patient \d+", "exactly one capture group"),
        (r"(patient) (\d+)", "exactly one capture group"),
        (r"patient (\d+", "invalid --patient-regex"),
    ],
)
def test_bad_patient_regex(synth_tree, regex, message):
    with pytest.raises(FastallError, match=message):
        discover(synth_tree, patient_regex=regex)
    result = _scan(str(synth_tree), "--patient-regex", regex)
    assert result.exit_code == 1 and message in result.output


def test_empty_and_one_class_datasets(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    ds = discover(empty)
    assert not ds.records and ds.warnings
    with pytest.raises(FastallError, match="no images found"):
        ds.check(training=False)
    result = _scan(str(empty))
    assert result.exit_code == 1 and "no images found" in result.output
    one = tmp_path / "one" / "all"
    one.mkdir(parents=True)
    (one / "x.png").write_bytes(b"")
    ds = discover(one.parent)
    ds.check(training=False)
    with pytest.raises(FastallError, match="at least two classes"):
        ds.check(training=True)
    with pytest.raises(FastallError, match="not found"):
        discover(tmp_path / "missing")


def _edit_csv(base: Path, edit) -> None:
    path = base / PRELIM_CSV
    rows = path.read_text().splitlines()
    path.write_text("\n".join(edit(rows)) + "\n")


def _first(base: Path, pattern: str) -> Path:
    return sorted(base.glob(pattern))[0]


def _case_empty_class(b):
    for f in (b / "training_data/fold_1/hem").iterdir():
        f.unlink()
    return "training_data/fold_1/hem", "empty class folder", True


def _case_missing_class(b):
    shutil.rmtree(b / "training_data/fold_2/hem")
    return "training_data/fold_2/hem", "missing class folder", True


def _case_csv_garbage(b):
    (b / PRELIM_CSV).write_bytes(b"\xff\xfe\x00\x81garbage")
    return PRELIM_CSV, "cannot read labels CSV", True


def _case_csv_missing(b):
    (b / PRELIM_CSV).unlink()
    return PRELIM_CSV, "file not found", True


def _case_csv_lacks_column(b):
    _edit_csv(b, lambda rows: [",".join(r.split(",")[:2]) for r in rows])
    return PRELIM_CSV, "lacks column(s) labels", True


def _case_csv_row_missing_file(b):
    (b / PRELIM_DIR / "2.bmp").unlink()
    return f"{PRELIM_DIR}/2.bmp", "names this file: missing", False


def _case_file_not_in_csv(b):
    shutil.copy(b / PRELIM_DIR / "1.bmp", b / PRELIM_DIR / "999.bmp")
    return f"{PRELIM_DIR}/999.bmp", "not listed in the labels CSV", False


def _case_duplicate_name(b):
    src = _first(b, "training_data/fold_0/all/*.bmp")
    shutil.copy(src, b / "training_data/fold_1/all" / src.name)
    return f"training_data/fold_1/all/{src.name}", "duplicate image name", True


def _case_duplicate_csv_row(b):
    _edit_csv(b, lambda rows: [*rows, rows[1]])
    return PRELIM_CSV, "duplicate row for 1.bmp", True


def _case_no_rule(b):
    shutil.copy(_first(b, "training_data/fold_0/all/*.bmp"), b / "training_data/fold_0/all/cell 7.bmp")
    return "training_data/fold_0/all/cell 7.bmp", "does not match UID_", False


@pytest.mark.parametrize("name", ["../escape.bmp", "/etc/passwd", "sub/../../x.bmp", ".."])
def test_csv_name_leaving_its_folder(synth_tree, tmp_path, name):
    base = _copy(synth_tree, tmp_path / "d") / "C-NMC_Leukemia"
    _edit_csv(base, lambda rows: [*rows, f"UID_99_1_1_all.bmp,{name},1"])
    ds = discover(base)
    bad = [p for p in ds.problems if name in p.message]
    assert bad and bad[0].fatal and bad[0].path.endswith(PRELIM_CSV)
    assert "not a plain file name" in bad[0].message
    result = _scan(str(base))
    assert result.exit_code == 1 and "not a plain file name" in result.output


def _case_non_image(b):
    (b / "training_data/fold_0/hem/notes.txt").write_text("hello")
    return "training_data/fold_0/hem/notes.txt", "not an image file", False


def _case_suffix_mismatch(b):
    src = _first(b, "training_data/fold_0/all/*.bmp")
    shutil.move(src, b / "training_data/fold_0/hem" / src.name)
    return f"training_data/fold_0/hem/{src.name}", "name says all but the file is in the hem folder", True


def _case_prefix_mismatch(b):
    src = _first(b, "training_data/fold_0/all/*.bmp")
    shutil.copy(src, b / "training_data/fold_0/all/UID_H9_1_1_all.bmp")
    return "training_data/fold_0/all/UID_H9_1_1_all.bmp", "disagrees with class all", False


def _case_bad_label(b):
    _edit_csv(b, lambda rows: [rows[0], rows[1].rsplit(",", 1)[0] + ",2", *rows[2:]])
    return f"{PRELIM_DIR}/1.bmp", "labels must be 0 or 1", True


def _case_label_disagrees(b):
    _edit_csv(b, lambda rows: [rows[0], rows[1][:-1] + str(1 - int(rows[1][-1])), *rows[2:]])
    return f"{PRELIM_DIR}/1.bmp", "but labels says", True


def _case_bad_patient_id(b):
    _edit_csv(b, lambda rows: [rows[0], "mystery.bmp," + rows[1].split(",", 1)[1], *rows[2:]])
    return f"{PRELIM_DIR}/1.bmp", "Patient_ID 'mystery.bmp' does not match", False


def _case_symlink_loop_dir(b):
    (b / "training_data/fold_0/all/sub").mkdir()
    os.symlink("..", b / "training_data/fold_0/all/sub/loop")
    return "training_data/fold_0/all/sub/loop", "symlink loop", False


def _case_broken_symlink(b):
    os.symlink("nowhere.bmp", b / "training_data/fold_0/all/UID_1_99_1_all.bmp")
    return "training_data/fold_0/all/UID_1_99_1_all.bmp", "broken symlink", False


def _case_self_symlink(b):
    os.symlink("UID_1_98_1_all.bmp", b / "training_data/fold_0/all/UID_1_98_1_all.bmp")
    return "training_data/fold_0/all/UID_1_98_1_all.bmp", "symlink loop", False


def _case_fifo(b):
    os.mkfifo(b / "training_data/fold_0/all/UID_1_97_1_all.bmp")
    return "training_data/fold_0/all/UID_1_97_1_all.bmp", "special file", False


CASES = [v for k, v in sorted(globals().items()) if k.startswith("_case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[6:] for c in CASES])
def test_problem_cases(synth_tree, tmp_path, case):
    base = _copy(synth_tree, tmp_path / "d") / "C-NMC_Leukemia"
    where, message, fatal = case(base)
    ds = discover(base)
    hits = [p for p in ds.problems if p.path == str(base / where) and message in p.message]
    assert hits, f"no problem {message!r} for {where}; got {[str(p) for p in ds.problems]}"
    assert hits[0].fatal == fatal and str(hits[0]).startswith(str(base / where))
    assert not any(r.path == base / where for r in ds.records)
    assert isinstance(ds, Dataset) and len(ds.records) > 0

    result = _scan(str(base), "--json")
    summary = json.loads(result.stdout)
    assert any(p["path"] == str(base / where) and message in p["message"] for p in summary["problems"])
    assert result.exit_code == (1 if fatal else 0)
    if fatal:
        error = result.stderr.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("Error:") and "fatal problem" in error[0]
        assert str(base) in error[0]
    text = _scan(str(base))
    assert text.exit_code == (1 if fatal else 0) and "problem(s)" in text.stdout


@pytest.fixture(scope="module")
def manifest_tree(tmp_path_factory) -> Path:
    if not MANIFEST.is_file():
        pytest.skip(f"real C-NMC manifest not found at {MANIFEST}")
    from fastall.data.synth import synthesize

    out = tmp_path_factory.mktemp("manifest")
    synthesize(out, like_manifest=MANIFEST, size=8)
    return out


def test_real_manifest_figures(manifest_tree):
    ds = discover(manifest_tree, include=())
    assert not ds.problems and not ds.warnings
    names = {line.strip() for line in MANIFEST.read_text().splitlines() if line.strip()}
    assert {r.rel_path.removeprefix("C-NMC_Leukemia/") for r in ds.records} == names
    assert ds.class_counts() == {"hem": 3389, "all": 7272}
    assert ds.patient_class_counts() == {"hem": 26, "all": 47} and len(ds.patients()) == 73
    per_fold = {s: Counter(r.class_name for r in ds.records if r.source == s) for s in ds.sources}
    assert per_fold == {
        "fold_0": {"all": 2397, "hem": 1130},
        "fold_1": {"all": 2418, "hem": 1163},
        "fold_2": {"all": 2457, "hem": 1096},
    }
    h3 = [r for r in ds.records if "UID_h3_" in r.rel_path]
    assert h3 and {r.patient for r in h3} == {"H3"} and "h3" not in ds.patients()
    assert "24" in ds.patients() and "H24" in ds.patients()
    result = _scan(str(manifest_tree), "--json")
    summary = json.loads(result.stdout)
    assert result.exit_code == 0 and summary["patients"] == 73
    assert {c: v["patients"] for c, v in summary["per_class"].items()} == {"hem": 26, "all": 47}
    assert {c: v["images"] for c, v in summary["per_class"].items()} == {"hem": 3389, "all": 7272}


def test_unreadable_folder_is_a_problem(synth_tree, tmp_path, monkeypatch):
    base = _copy(synth_tree, tmp_path / "d") / "C-NMC_Leukemia"
    target = base / "training_data/fold_0/all"
    real = os.scandir

    def scandir(path="."):
        if Path(path) == target:
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    ds = discover(base)
    assert any(
        p.path == str(target) and "cannot read folder (Permission denied)" in p.message for p in ds.problems
    )
    assert not any(r.rel_path.startswith("C-NMC_Leukemia/training_data/fold_0/all/") for r in ds.records)
    with pytest.raises(FastallError, match="fatal problem"):
        ds.check()


def _odd_tree(top: Path) -> Path:
    """Images beside hidden files and folders, a nested folder, a text file and non-regular entries."""
    from PIL import Image

    for rel in ("a/x.bmp", "a/.y.bmp", "a/.hidden/z.bmp", "a/deeper/w.png", "b/v.bmp"):
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (120, 30, 200)).save(top / rel, format="PNG")
    (top / "b" / "notes.txt").write_text("not an image")
    os.symlink("nowhere.bmp", top / "a" / "broken.bmp")
    os.symlink("loop.bmp", top / "a" / "loop.bmp")
    os.mkfifo(top / "b" / "pipe.bmp")
    os.symlink("..", top / "b" / "up")
    return top


def test_one_walker_skips_hidden_entries_and_reports_what_is_not_a_file(tmp_path):
    from fastall.data.walk import find_images, walk_files

    top = _odd_tree(tmp_path / "t")
    problems = []
    files = list(walk_files(top, lambda path, message: problems.append((Path(path).name, message))))
    assert [f.relative_to(top).as_posix() for f in files] == [
        "a/x.bmp",
        "a/deeper/w.png",
        "b/notes.txt",
        "b/v.bmp",
    ]
    assert sorted(problems) == [
        ("broken.bmp", "broken symlink (target missing)"),
        ("loop.bmp", "symlink loop"),
        ("pipe.bmp", "special file: a named pipe (FIFO), not a regular file or folder"),
        ("up", "folder reached twice (symlink loop?)"),
    ]
    paths, found_problems = find_images([top, top / "a" / "x.bmp", tmp_path / "gone"])
    assert [p.relative_to(top).as_posix() for p in paths] == ["a/x.bmp", "a/deeper/w.png", "b/v.bmp"]
    assert {Path(p).name for p, _ in found_problems} == {"broken.bmp", "loop.bmp", "pipe.bmp", "up", "gone"}


def test_discovery_and_predict_walk_the_same_files(tmp_path):
    from fastall.data.walk import IMAGE_EXTENSIONS, find_images

    top = _odd_tree(tmp_path / "t")
    (top / "b" / "up").unlink()  # discovery walks each class folder: a link up would reach the other class
    ds = discover(top)
    discovered = sorted(r.path for r in ds.records)
    assert discovered == sorted(p for p in find_images([top])[0] if p.suffix.lower() in IMAGE_EXTENSIONS)
    assert not any(".hidden" in str(p) for p in discovered)
    assert any(p.message.startswith("not an image file") for p in ds.problems)


def test_predict_and_extract_decode_the_same_pixels(synth_tree):
    from fastall.data.loader import iter_batches
    from fastall.features.loop import ImageViews

    records = discover(synth_tree).records[:5]
    views = ImageViews(records, list(range(len(records))), 24, seed=0, views=2)
    batch = next(iter_batches([r.path for r in records], 24, batch_size=5))
    for k in range(len(records)):
        image, params, index, error, _ = views[k]
        assert error == "" and index == k and params.shape[0] == 2
        assert torch.equal(image, batch.images[k])


def test_extract_views_of_an_unreadable_image_are_zeros_with_the_message(tmp_path):
    from fastall.data.records import Record
    from fastall.features.loop import ImageViews

    bad = tmp_path / "bad.bmp"
    bad.write_bytes(b"")
    image, _, _, error, _ = ImageViews([Record(bad, "bad.bmp", 0, "all", "p", "x")], [0], 16, 0, 1)[0]
    assert not image.any() and image.shape == (3, 16, 16) and "bad.bmp: empty file" in error
