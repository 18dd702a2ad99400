"""`fastall screen`: synthetic smears through a demo-sized run, counted per smear and patient."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastall.cli import cli
from fastall.inference.screen_tables import patient_cut, summarise, wilson
from tests.e2e_helpers import copy_run, shared_run


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    from fastall.data.synth_smear import draw_smear, smear_look, synthesize_smears
    from fastall.system.files import atomic_write

    e2e = shared_run(tmp_path_factory)
    base = tmp_path_factory.mktemp("screen")
    run = copy_run(e2e, base / "run")
    smears = synthesize_smears(base / "smears", patients_per_class=1, smears_per_patient=2, width=320).root
    single = next(e2e.data.rglob("*.bmp"))  # a C-NMC crop: one centred cell on black
    shutil.copy(single, smears / "single.bmp")
    rng = np.random.default_rng(1)
    from fastall.data.smears import png_bytes

    empty = draw_smear(rng, smear_look(rng, (0.0, 0.2)), 320, 240, leukocytes=(0, 1))[0]
    atomic_write(smears / "empty.png", lambda fh: fh.write(png_bytes(empty)))
    out = base / "out"
    args = ["screen", str(run), str(smears), "--out", str(out), "--patients", str(smears / "patients.csv")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return run, smears, out, result.output


def test_screen_writes_tables_whose_counts_equal_the_crops(screened):
    run, smears, out, output = screened
    for name in ("cells.csv", "smears.csv", "patients.csv", "screen.json", "index.html"):
        assert (out / name).is_file(), name
    cells, rows = _rows(out / "cells.csv"), _rows(out / "smears.csv")
    assert len(rows) == 6
    for row in rows:
        stem = Path(row["smear"]).stem
        crops = list((out / "cells" / stem).glob("*.png"))
        if row["kind"] == "smear":
            assert int(row["leukocytes"]) == len(crops) == sum(c["smear"] == row["smear"] for c in cells)
    kinds = {r["smear"]: (r["kind"], r["leukocytes"], r["note"]) for r in rows}
    assert kinds["single.bmp"][:2] == ("single cell", "1")
    assert kinds["empty.png"][:2] == ("smear", "0") and "no leukocyte" in kinds["empty.png"][2]
    summary = json.loads((out / "screen.json").read_text())
    assert summary["format"] == "fastall-screen" and summary["cells"] == len(cells)
    assert summary["training_scale"]["fill"] is not None
    assert (run / "cell_scale.json").is_file()


def test_predict_on_the_crops_gives_the_same_classes(screened):
    run, _, out, _ = screened
    summary = json.loads((out / "screen.json").read_text())
    target = out.parent / "p.csv"
    args = [
        "predict",
        str(run),
        str(out / "cells"),
        "--out",
        str(target),
        "--precision",
        summary["precision"],
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    predicted = {Path(r["path"]).relative_to(out).as_posix(): r["predicted_class"] for r in _rows(target)}
    cells = _rows(out / "cells.csv")
    assert cells and {c["cell"]: c["predicted_class"] for c in cells} == predicted


def test_patients_aggregate_their_smears(screened):
    _, smears, out, _ = screened
    mapping = {r["path"]: r["patient"] for r in _rows(smears / "patients.csv")}
    rows = {r["patient"]: r for r in _rows(out / "patients.csv")}
    smear_rows = _rows(out / "smears.csv")
    for patient in set(mapping.values()):
        mine = [r for r in smear_rows if r["patient"] == patient]
        assert int(rows[patient]["leukocytes"]) == sum(int(r["leukocytes"]) for r in mine)
        assert int(rows[patient]["smears"]) == len(mine) == 2
    assert "empty.png" in rows  # not in --patients: its own patient, and said so
    summary = json.loads((out / "screen.json").read_text())
    assert any(w["code"] == "patients" for w in summary["warnings"])


def test_screen_report_in_chromium(screened):
    from tests.browser import chromium, load

    _, _, out, _ = screened
    if chromium() is None:
        pytest.skip("no Chromium")
    expression = "[...document.querySelectorAll('figure.smear rect')].map(r => r.getAttribute('stroke'))"
    page = load(out / "index.html", expression)
    assert not page.errors, page.errors
    cells = _rows(out / "cells.csv")
    assert len(page.value) == len(cells)
    from fastall.reporting.smear_html import class_colours

    colours = class_colours(json.loads((out / "screen.json").read_text())["class_names"])
    assert page.value == [colours[c["predicted_class"]] for c in cells]


def test_the_cut_comes_from_out_of_fold_patients_only(tmp_path):
    lines = ["path,patient,true_class,split,fold,predicted_class"]
    calls = {"A": (1, 1, 1, 0), "B": (1, 1, 0, 0), "C": (0, 0, 0, 1), "D": (0, 0, 0, 0)}
    truth = {"A": "all", "B": "all", "C": "hem", "D": "hem"}
    for patient, called in calls.items():
        for k, c in enumerate(called):
            lines.append(f"{patient}_{k}.bmp,{patient},{truth[patient]},val,0,{'all' if c else 'hem'}")
    lines.append("T_0.bmp,T,hem,test,,all")  # a test row never moves the cut
    (tmp_path / "predictions.csv").write_text("\n".join(lines) + "\n")
    cut = patient_cut(tmp_path, "all")
    assert cut["cut"] == 0.5 and cut["patients"] == 4
    assert cut["sensitivity"] == 1.0 and cut["specificity"] == 1.0
    assert patient_cut(tmp_path, None)["cut"] is None


def test_wilson_interval_and_summaries():
    low, high = wilson(3, 10)
    z = 1.959963984540054
    centre, half = (3 + z * z / 2) / (10 + z * z), z * math.sqrt(3 * 7 / 10 + z * z / 4) / (10 + z * z)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    cells = [{"called": c, "p": p} for c, p in [(True, 0.9), (False, 0.2), (True, 0.7)]]
    row = summarise(cells, 0.6)
    assert row["leukocytes"] == 3 and row["positive"] == 2 and row["flag"]
    assert row["mean_probability"] == pytest.approx(0.6)
    assert not summarise([], 0.1)["flag"]
