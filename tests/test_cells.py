"""`fastall cells`: leukocytes found in synthetic smears, crops in a generic tree, scoring against boxes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fastall.cli import cli
from fastall.data.boxes import iou_matrix, match, read_boxes, score_detection
from fastall.data.detect import StainError, detect
from fastall.data.synth_smear import synthesize_smears

BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd"


@pytest.fixture(scope="module")
def smears(tmp_path_factory) -> Path:
    """12 synthetic 640x480 smears of 6 patients (about 40 leukocytes)."""
    return synthesize_smears(
        tmp_path_factory.mktemp("smears"), patients_per_class=3, smears_per_patient=2
    ).root


@pytest.fixture(scope="module")
def cells(smears, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("c") / "cells"
    result = CliRunner().invoke(
        cli, ["cells", str(smears), "--out", str(out), "--boxes", str(smears / "boxes.csv")]
    )
    assert result.exit_code == 0, result.output
    return out


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_synthetic_smears_meet_the_detection_goal(cells):
    report = json.loads((cells / "detection.json").read_text())
    at = report["by_iou"]["0.5"]
    assert at["recall"]["value"] >= 0.95 and at["precision"]["value"] >= 0.9, at
    assert at["recall"]["ci"][0] <= at["recall"]["value"] <= at["recall"]["ci"][1]
    assert report["by_iou"]["0.3"]["tp"] >= at["tp"]
    assert report["images"] == 12


def test_crops_are_a_generic_tree_matching_cells_csv(cells, smears):
    rows = _rows(cells / "cells.csv")
    assert list(rows[0]) == ["smear", "cell", "x0", "y0", "x1", "y1", "area", "score"]
    crops = sorted(p.relative_to(cells).as_posix() for p in cells.glob("*/*.png"))
    assert crops == sorted(r["cell"] for r in rows)
    for r in rows:
        stem = Path(r["smear"]).stem
        assert r["cell"].startswith(f"{stem}/{stem}_")
        side = Image.open(cells / r["cell"]).size
        box = max(int(r["x1"]) - int(r["x0"]), int(r["y1"]) - int(r["y0"]))
        assert side[0] == side[1] == round(box * 1.3)  # square, margin 0.15 on each side
    per_smear = {r["smear"]: int(r["cells"]) for r in _rows(cells / "smears.csv")}
    assert sum(per_smear.values()) == len(rows)
    assert json.loads((cells / "cells.json").read_text())["format"] == "fastall-cells"


def test_scan_reads_the_cells_tree_as_it_is(cells):
    result = CliRunner().invoke(cli, ["scan", str(cells), "--json"])
    assert result.exit_code == 0, result.output
    scanned = json.loads(result.output[result.output.index("{") :])
    assert scanned["layout"] == "generic" and scanned["images"] == len(_rows(cells / "cells.csv"))


def test_synth_smear_layout_writes_boxes_and_patients(tmp_path):
    out = tmp_path / "s"
    args = ["synth", str(out), "--layout", "smear", "--patients-per-class", "1", "--images-per-patient", "1"]
    result = CliRunner().invoke(cli, [*args, "--size", "200"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["P001_S01.png", "P002_S01.png"]
    assert Image.open(out / "P001_S01.png").size == (200, 150)
    boxes = _rows(out / "boxes.csv")
    assert boxes and all(0 <= int(b["xmin"]) < int(b["xmax"]) <= 200 for b in boxes)
    assert {r["patient"] for r in _rows(out / "patients.csv")} == {"P001", "P002"}


def _slow_match(found, scores, truth, threshold):
    """The VOC rule written plainly: detections by score, each to the best unmatched box."""

    def iou(a, b):
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = ix * iy
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    used, tp = set(), 0
    for i in sorted(range(len(found)), key=lambda k: -scores[k]):
        best, best_j = -1.0, None
        for j in range(len(truth)):
            if j not in used and iou(found[i], truth[j]) > best:
                best, best_j = iou(found[i], truth[j]), j
        if best_j is not None and best >= threshold:
            used.add(best_j)
            tp += 1
    return tp, len(found) - tp, len(truth) - tp


def test_boxes_scoring_agrees_with_a_slow_reference_matcher():
    rng = np.random.default_rng(0)
    detections, truth, totals = {}, {}, {0.5: np.zeros(3), 0.3: np.zeros(3)}
    for k in range(40):
        t = rng.uniform(0, 400, (int(rng.integers(0, 6)), 2))
        gt = np.hstack([t, t + rng.uniform(20, 90, t.shape)])
        jitter = gt[rng.uniform(0, 1, len(gt)) < 0.8]
        extra = rng.uniform(0, 400, (int(rng.integers(0, 3)), 2))
        found = np.vstack([jitter + rng.normal(0, 10, jitter.shape), np.hstack([extra, extra + 40])])
        scores = rng.uniform(0, 1, len(found))
        detections[f"s{k}"], truth[f"s{k}"] = (found, scores), gt
        for threshold in totals:
            fast = match(found, scores, gt, threshold)
            assert fast == _slow_match(found.tolist(), scores.tolist(), gt.tolist(), threshold)
            totals[threshold] += fast
    report = score_detection(detections, truth, resamples=200)
    for threshold, (tp, fp, fn) in totals.items():
        m = report["by_iou"][f"{threshold:g}"]
        assert (m["tp"], m["fp"], m["fn"]) == (tp, fp, fn)
        assert m["precision"]["value"] == pytest.approx(tp / (tp + fp))
        assert m["recall"]["value"] == pytest.approx(tp / (tp + fn))


def test_iou_matrix_values():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert iou_matrix(a, b).tolist() == [[1.0, pytest.approx(1 / 3), 0.0]]


def test_voc_folder_reads_like_the_csv(tmp_path):
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename>"
        "<object><name>WBC</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>50</xmax><ymax>70</ymax></bndbox></object>"
        "<object><name>RBC</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>5</xmax><ymax>7</ymax></bndbox></object>"
        "</annotation>"
    )
    (tmp_path / "b.csv").write_text("image,xmin,ymin,xmax,ymax\na.png,10,20,50,70\n")
    voc, table = read_boxes(tmp_path / "voc"), read_boxes(tmp_path / "b.csv")
    assert list(voc) == list(table) == ["a"]
    assert voc["a"].tolist() == table["a"].tolist() == [[10, 20, 50, 70]]


def test_empty_and_greyscale_smears():
    from fastall.data.synth_smear import draw_smear, smear_look

    rng = np.random.default_rng(0)
    empty = draw_smear(rng, smear_look(rng, (0.0, 0.2)), 320, 240, leukocytes=(0, 1))[0]
    found = detect(empty)
    assert len(found) == 0 and found.kind == "smear"
    grey = np.repeat(rng.integers(40, 230, (120, 160, 1), dtype=np.uint8), 3, axis=2)
    with pytest.raises(StainError, match="--method"):
        detect(grey)


def test_a_large_field_finds_every_leukocyte():
    """Four smears as one 1280x960 field: sizes follow its red cells."""
    from fastall.data.synth_smear import draw_smear, smear_look

    rng = np.random.default_rng(5)
    tiles = [draw_smear(rng, smear_look(rng, (0.0, 0.2)), 640, 480) for _ in range(4)]
    field = np.vstack([np.hstack([tiles[0][0], tiles[1][0]]), np.hstack([tiles[2][0], tiles[3][0]])])
    truth = np.array([b for k, (_, boxes) in enumerate(tiles) for b in _shift(boxes, k)], dtype=float)
    found = detect(field)
    tp, fp, fn = match(found.boxes, found.scores, truth, 0.5)
    assert tp >= 0.9 * len(truth) and fp <= 1, (tp, fp, fn)


def _shift(boxes: list, k: int) -> list:
    dx, dy = 640 * (k % 2), 480 * (k // 2)
    return [[b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy] for b in boxes]


def test_a_black_background_cell_is_a_single_cell_image(tmp_path):
    from fastall.data.synth import synthesize

    tree = synthesize(tmp_path / "d", patients_per_class=1, images_per_patient=1, size=64, prelim=False).root
    image = next(tree.rglob("*.bmp"))
    out = tmp_path / "cells"
    result = CliRunner().invoke(cli, ["cells", str(image), "--out", str(out)])
    assert result.exit_code == 0, result.output
    row = _rows(out / "smears.csv")[0]
    assert (row["kind"], row["cells"]) == ("single cell", "1")
    crop = next(out.glob("*/*.png"))
    assert np.array_equal(np.asarray(Image.open(crop)), np.asarray(Image.open(image).convert("RGB")))


@pytest.mark.skipif(not BCCD.is_dir(), reason="../shared/data/bccd is not here")
def test_real_bccd_crops_are_single_cells_around_their_centre():
    files = sorted(BCCD.rglob("*.jpg"))[::12]
    single = 0
    for f in files:
        found = detect(np.asarray(Image.open(f).convert("RGB")))
        if found.kind == "single cell":
            x0, y0, x1, y1 = found.boxes[0]
            single += x0 < found.width / 2 < x1 and y0 < found.height / 2 < y1
    assert single >= 0.75 * len(files), (single, len(files))


def test_cells_page_in_chromium(cells):
    from tests.browser import chromium, load

    if chromium() is None:
        pytest.skip("no Chromium")
    page = load(cells / "index.html", "document.querySelectorAll('figure.smear rect').length")
    assert not page.errors, page.errors
    assert page.value == len(_rows(cells / "cells.csv"))
    assert all(r.startswith(("file:", "data:")) for r in page.requests), page.requests


def test_detection_in_worker_processes_writes_the_same_crops(smears, cells, tmp_path):
    from fastall.data.smears import CropConfig, crop_cells
    from fastall.system.events import collecting

    reporter, _ = collecting()
    smears_found = crop_cells([smears], tmp_path, CropConfig(workers=2), reporter)
    assert sum(s.cells for s in smears_found) == len(_rows(cells / "cells.csv"))
    mine = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    theirs = sorted(p.relative_to(cells).as_posix() for p in cells.glob("*/*.png"))
    assert mine == theirs
    assert all((tmp_path / m).read_bytes() == (cells / m).read_bytes() for m in mine)
