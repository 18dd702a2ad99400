"""synthesize: C-NMC layout and names, determinism, manifest reproduction, speed, and the CLI."""

from __future__ import annotations

import csv
import hashlib
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MANIFEST
from PIL import Image

from fastall.cli import cli
from fastall.data.cells import appearance, typicality_ranges
from fastall.data.discover import PRELIM_CSV, PRELIM_DIR, TESTING_DIR, discover, parse_cnmc_name
from fastall.data.synth import GENERIC_PATIENT_REGEX, synthesize
from fastall.errors import FastallError


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_deterministic_for_a_seed(tmp_path):
    kwargs = {"patients_per_class": 3, "images_per_patient": 4, "size": 24, "testing": True}
    a = synthesize(tmp_path / "a", seed=5, **kwargs)
    b = synthesize(tmp_path / "b", seed=5, **kwargs)
    c = synthesize(tmp_path / "c", seed=6, **kwargs)
    assert _hashes(a.root) == _hashes(b.root) and len(_hashes(a.root)) == a.images + 1
    assert _hashes(a.root) != _hashes(c.root)
    assert a.testing_labels == b.testing_labels


def test_layout_names_and_summary(synth_tree):
    base = synth_tree / "C-NMC_Leukemia"
    folds: dict[str, set[str]] = defaultdict(set)
    per_patient: Counter[str] = Counter()
    for path in (base / "training_data").rglob("*.bmp"):
        fold, cls = path.parts[-3], path.parts[-2]
        patient, suffix = parse_cnmc_name(path.name)
        assert suffix == cls and patient.startswith("H") == (cls == "hem")
        folds[patient].add(fold)
        per_patient[patient] += 1
    assert all(len(f) == 1 for f in folds.values()) and len(folds) == 6
    assert {f for fs in folds.values() for f in fs} == {"fold_0", "fold_1", "fold_2"}
    with open(base / PRELIM_CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["Patient_ID", "new_names", "labels"]
    assert sorted(r["new_names"] for r in rows) == sorted(p.name for p in (base / PRELIM_DIR).iterdir())
    prelim_patients = {parse_cnmc_name(r["Patient_ID"])[0] for r in rows}
    assert prelim_patients and not prelim_patients & set(folds)
    assert all(r["labels"] == ("1" if r["Patient_ID"].endswith("_all.bmp") else "0") for r in rows)
    assert sorted(p.name for p in (base / TESTING_DIR).iterdir()) == sorted(
        f"{k}.bmp" for k in range(1, len(list((base / TESTING_DIR).iterdir())) + 1)
    )
    img = Image.open(next((base / "training_data").rglob("*.bmp")))
    assert img.format == "BMP" and img.mode == "RGB" and img.size == (32, 32)
    arr = np.asarray(img)
    assert arr[0, 0].tolist() == [0, 0, 0] and arr[16, 16].sum() > 0


def test_counts_vary_and_classes_differ(tmp_path):
    s = synthesize(tmp_path, patients_per_class=6, images_per_patient=8, size=64, prelim=False)
    base = s.root / "training_data"
    counts = Counter(parse_cnmc_name(p.name)[0] for p in base.rglob("*.bmp"))
    assert len(set(counts.values())) > 2 and min(counts.values()) >= 4 and max(counts.values()) <= 12
    assert s.images == sum(counts.values()) and s.patients_per_class == {"hem": 6, "all": 6}

    def area(cls: str) -> float:
        return float(
            np.mean([(np.asarray(Image.open(p)).max(axis=2) > 0).mean() for p in base.glob(f"*/{cls}/*.bmp")])
        )

    assert area("all") > 1.4 * area("hem")


def test_speed_64px(tmp_path):
    start = time.perf_counter()
    s = synthesize(tmp_path, patients_per_class=5, images_per_patient=20, size=64, prelim=False)
    per_image = (time.perf_counter() - start) / s.images
    assert per_image < 0.020, f"{per_image * 1e3:.1f} ms per 64-px image, file writing included"


def test_like_manifest(tmp_path):
    manifest = tmp_path / "m.txt"
    names = [
        "training_data/fold_0/all/UID_7_1_1_all.bmp",
        "training_data/fold_0/all/UID_7_1_2_all.bmp",
        "training_data/fold_0/all/UID_7_2_1_all.bmp",
        "training_data/fold_2/hem/UID_h3_1_1_hem.bmp",
    ]
    manifest.write_text("\n".join(names) + "\n")
    s = synthesize(tmp_path / "out", like_manifest=manifest, max_per_patient=2, size=8)
    written = sorted(p.relative_to(s.root).as_posix() for p in s.root.rglob("*.bmp"))
    assert written == sorted(names[:2] + names[3:]) and s.patients_per_class == {"hem": 1, "all": 1}
    assert not (s.root / "validation_data").exists()
    with_prelim = synthesize(tmp_path / "out2", like_manifest=manifest, size=8, prelim=True)
    with open(with_prelim.root / PRELIM_CSV, newline="") as fh:
        prelim = {parse_cnmc_name(r["Patient_ID"])[0] for r in csv.DictReader(fh)}
    assert prelim == {"8", "9", "10", "H4", "H5", "H6"}
    manifest.write_text(names[0] + "\ntraining_data/fold_0/hem/UID_7_1_1_all.bmp\n")
    with pytest.raises(FastallError, match=r"m\.txt:2: not a C-NMC training image path"):
        synthesize(tmp_path / "out3", like_manifest=manifest, size=8)


@pytest.mark.skipif(not MANIFEST.is_file(), reason=f"real C-NMC manifest not found at {MANIFEST}")
def test_real_manifest_first_k(tmp_path):
    s = synthesize(tmp_path, like_manifest=MANIFEST, max_per_patient=3, size=8)
    assert s.patients_per_class == {"hem": 26, "all": 47} and s.images == 73 * 3
    lines = [line.strip() for line in MANIFEST.read_text().splitlines() if line.strip()]
    seen: Counter[str] = Counter()
    expected = []
    for line in lines:
        patient = parse_cnmc_name(line.rsplit("/", 1)[1])[0]
        seen[patient] += 1
        if seen[patient] <= 3:
            expected.append(line)
    assert sorted(p.relative_to(s.root).as_posix() for p in s.root.rglob("*.bmp")) == sorted(expected)


def test_refusals_and_overwrite(tmp_path):
    synthesize(tmp_path, patients_per_class=1, images_per_patient=1, size=8, prelim=False)
    with pytest.raises(FastallError, match="already exists"):
        synthesize(tmp_path, patients_per_class=1, images_per_patient=1, size=8)
    s = synthesize(tmp_path, patients_per_class=2, images_per_patient=1, size=8, prelim=False, overwrite=True)
    assert len(list(s.root.rglob("*.bmp"))) == s.images == 4
    for kwargs, message in [
        ({"size": 4}, "image size"),
        ({"patients_per_class": 0}, "patients per class"),
        ({"images_per_patient": 0}, "images per patient"),
        ({"max_per_patient": 0}, "max per patient"),
    ]:
        with pytest.raises(FastallError, match=message):
            synthesize(tmp_path / "x", **kwargs)


def test_cli_synth(tmp_path):
    args = [
        "synth",
        str(tmp_path),
        "--patients-per-class",
        "2",
        "--images-per-patient",
        "3",
        "--size",
        "16",
        "--seed",
        "3",
        "--testing",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout and (tmp_path / "C-NMC_Leukemia" / TESTING_DIR).is_dir()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and isinstance(again.exception, SystemExit)
    assert "already exists" in again.output and "Traceback" not in again.output


def _pixels(root: Path, pattern: str = "**/*.bmp") -> np.ndarray:
    return np.stack([np.asarray(Image.open(p), dtype=np.float32) for p in sorted(root.glob(pattern))])


def test_light_and_smear_backgrounds(tmp_path):
    kwargs = {"patients_per_class": 2, "images_per_patient": 3, "size": 64, "prelim": False, "seed": 1}
    black = _pixels(synthesize(tmp_path / "b", **kwargs).root)
    light = _pixels(synthesize(tmp_path / "l", background="light", **kwargs).root)
    smear = _pixels(synthesize(tmp_path / "s", background="smear", **kwargs).root)
    ring = lambda a: np.concatenate([a[:, 0], a[:, -1], a[:, :, 0], a[:, :, -1]], axis=1)  # noqa: E731
    assert ring(black).max() == 0
    assert ring(light).min(axis=(0, 1)).min() > 150 and light[:, 32, 32].mean() < ring(light).mean() - 40
    redness = lambda a: np.quantile(a[..., 0] - a[..., 1], 0.99)  # noqa: E731
    assert redness(ring(smear)) > redness(ring(light)) + 15  # faint red cells around the white cell
    assert np.array_equal(smear[:, 28:36, 28:36] > 0, light[:, 28:36, 28:36] > 0)


def test_generic_layout_with_four_classes(tmp_path):
    s = synthesize(tmp_path, layout="generic", classes=4, patients_per_class=3, images_per_patient=3, size=24)
    assert s.root == tmp_path and s.class_names == ["class0", "class1", "class2", "class3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == s.class_names
    assert s.patient_regex == GENERIC_PATIENT_REGEX and s.patients == 12
    owner: dict[str, set[str]] = defaultdict(set)
    for path in tmp_path.rglob("*.bmp"):
        owner[re.search(GENERIC_PATIENT_REGEX, path.name).group(1)].add(path.parent.name)
    assert len(owner) == 12 and all(len(c) == 1 for c in owner.values())
    ds = discover(tmp_path, patient_regex=GENERIC_PATIENT_REGEX)
    assert ds.layout == "generic" and ds.class_names == s.class_names and not ds.problems
    assert sorted(ds.patients()) == sorted(owner) and len(ds.records) == s.images
    with pytest.raises(FastallError, match="already exists"):
        synthesize(tmp_path, layout="generic", classes=4, patients_per_class=1, images_per_patient=1, size=8)
    again = synthesize(
        tmp_path,
        layout="generic",
        classes=3,
        patients_per_class=1,
        images_per_patient=1,
        size=8,
        overwrite=True,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == again.class_names
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FastallError, match="holds other files"):
        synthesize(tmp_path, layout="generic", overwrite=True, size=8)
    assert (tmp_path / "notes.txt").exists()


def test_hard_narrows_the_margin_and_widens_patient_effects(tmp_path):
    kwargs = {"patients_per_class": 6, "images_per_patient": 3, "size": 48, "prelim": False}
    stats = {}
    for name in ("easy", "hard"):
        s = synthesize(tmp_path / name, difficulty=name, **kwargs)
        base = s.root / "training_data"
        area = {c: (_pixels(base, f"*/{c}/*.bmp").max(axis=3) > 0).mean(axis=(1, 2)) for c in ("hem", "all")}
        per_patient = defaultdict(list)
        for p in base.rglob("*.bmp"):
            img = np.asarray(Image.open(p), dtype=np.float32)
            per_patient[parse_cnmc_name(p.name)[0]].append(img[img.max(axis=2) > 0].mean(axis=0))
        colours = np.stack([np.mean(v, axis=0) for v in per_patient.values()])
        stats[name] = (area["all"].mean() / area["hem"].mean(), colours.std(axis=0).mean())
    assert stats["hard"][0] < stats["easy"][0] and stats["hard"][1] > 1.5 * stats["easy"][1]
    assert appearance(difficulty="hard", class_margin=0.3).class_margin == 0.3
    assert appearance(patient_effect=2).patient_effect == 2.0


def test_typicality_ranges():
    assert typicality_ranges(2, None) == [(0.0, 0.15), (0.65, 1.0)]
    assert typicality_ranges(2, 0.0) == [(0.0, 0.5), (0.5, 1.0)]
    four = typicality_ranges(4, 0.4)
    gaps = [b[0] - a[1] for a, b in zip(four[:-1], four[1:], strict=True)]
    spacing = 2 / 3.6  # more classes than fit in [0, 1] at the 2-class spacing: the span is [-0.5, 1.5]
    assert gaps == pytest.approx([0.4 * spacing] * 3) and four[0][0] == pytest.approx(-0.5)
    assert four[-1][1] == pytest.approx(1.5)
    assert typicality_ranges(3, 1.0) == [(-0.5, -0.5), (0.5, 0.5), (1.5, 1.5)]
    overlap = typicality_ranges(2, -0.5)
    assert overlap[0][1] > overlap[1][0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layout": "generic", "classes": 1}, "classes must be between 2 and 20"),
        ({"layout": "generic", "classes": 21}, "classes must be between 2 and 20"),
        ({"classes": 3}, "C-NMC layout has 2 classes"),
        ({"layout": "generic", "testing": True}, "--testing needs the C-NMC layout"),
        ({"layout": "tree"}, "layout 'tree'"),
    ],
)
def test_layout_refusals(tmp_path, kwargs, message):
    with pytest.raises(FastallError, match=message):
        synthesize(tmp_path, size=8, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"background": "grey"}, "background 'grey'"),
        ({"difficulty": "medium"}, "difficulty 'medium'"),
        ({"class_margin": 1.5}, "class margin must be between -1 and 1"),
        ({"patient_effect": -1}, "patient effect must be between 0 and 5"),
    ],
)
def test_appearance_refusals(kwargs, message):
    with pytest.raises(FastallError, match=message):
        appearance(**kwargs)


def test_cli_synth_generic_prints_the_patient_regex(tmp_path):
    args = [
        "synth",
        str(tmp_path),
        "--layout",
        "generic",
        "--classes",
        "3",
        "--background",
        "smear",
        "--difficulty",
        "hard",
        "--patients-per-class",
        "2",
        "--images-per-patient",
        "2",
        "--size",
        "16",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"--patient-regex '{GENERIC_PATIENT_REGEX}'" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class0", "class1", "class2"]
