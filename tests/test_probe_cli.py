"""`fastall probe` end to end: a C-NMC-style tree (the demo's layout) and a generic 4-class tree, synthesised,
extracted and probed; probe.json, probe.csv, map.csv, the MLP run and the report page (opened in headless
Chromium), the same folds as train-head; bad inputs."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastall.cli import cli

BROWSER_MISSING = "headless Chromium (apt-get install chromium) and websocket-client are needed"


def _invoke(*args: str, ok: bool = True):
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    from fastall.data.synth import GENERIC_PATIENT_REGEX, synthesize
    from fastall.features.extract import extract

    base = tmp_path_factory.mktemp("probe")
    synthesize(base / "cnmc", patients_per_class=6, images_per_patient=5, size=48, seed=3, prelim=False)
    synthesize(base / "generic", patients_per_class=5, images_per_patient=5, size=48, seed=4,
               layout="generic", classes=4, prelim=False)  # fmt: skip
    out = {}
    for name, regex in (("cnmc", None), ("generic", GENERIC_PATIENT_REGEX)):
        extract(base / name, base / f"{name}.h5", views=2, image_size=32, weights="none", device="cpu",
                amp=False, workers=0, patient_regex=regex)  # fmt: skip
        out[name] = base / f"{name}.h5"
    out["base"] = base
    return out


@pytest.fixture(scope="module")
def runs(caches) -> dict[str, Path]:
    base = caches["base"]
    out = {}
    for name, extra in (("cnmc", []), ("generic", ["--no-mlp", "--ks", "1,5"])):
        res = _invoke("probe", str(caches[name]), "--out", str(base / f"probe_{name}"), "--folds", "3",
                      "--draws", "2", "--device", "cpu", *extra)  # fmt: skip
        out[name] = base / f"probe_{name}"
        out[f"{name}_output"] = res.output
    return out


@pytest.mark.parametrize("name", ["cnmc", "generic"])
def test_probe_writes_every_protocol(runs, name):
    folder = runs[name]
    rec = json.loads((folder / "probe.json").read_text())
    protocols = set(rec["protocols"])
    assert {"linear", "linear_fixed_c", "knn1_plain", "knn1_weighted", "knn5_weighted"} <= protocols
    assert ("mlp" in protocols) == (name == "cnmc")
    for key, s in rec["protocols"].items():
        ci = s["pooled"]["ci"]
        assert "intervals" in ci and ("log_loss" in ci or key == "mlp")
    assert len(rec["linear"]["chosen_c"]) == 3 and rec["linear"]["final_c"] is not None
    eff = rec["label_efficiency"]
    assert eff["unit"] == "patients per class"
    assert {p["size"] for p in eff["curves"]["linear_fixed_c"]["points"]} >= {1, 2, "all"}
    be = rec["batch_effect"]
    assert 0 <= be["same_patient_share"] <= 1 and be["patient_identification"]["accuracy"] >= 0
    assert rec["embedding"]["method"] in ("umap", "tsne")
    rows = list(csv.DictReader((folder / "probe.csv").read_text().splitlines()))
    assert [r["protocol"] for r in rows] == list(rec["protocols"])
    assert all(r["accuracy_low"] and float(r["accuracy_low"]) <= float(r["accuracy"]) for r in rows)
    points = list(csv.DictReader((folder / "map.csv").read_text().splitlines()))
    assert len(points) == rec["splits"]["pool_images"] + rec["splits"]["test_images"]
    assert "Protocols on the same patient-level folds" in runs[f"{name}_output"]
    assert (folder / "report" / "index.html").is_file()


def test_probe_uses_train_heads_folds(runs, caches):
    """The MLP reference is a train-head run on the same cache and seed: the same audited folds."""
    rec = json.loads((runs["cnmc"] / "probe.json").read_text())
    mlp = json.loads((runs["cnmc"] / "mlp" / "metrics.json").read_text())
    assert rec["splits"]["audit"] == mlp["splits"]["audit"]
    assert mlp["protocol"]["preset"] == "default"
    assert rec["protocols"]["mlp"]["summary"]["accuracy"] == mlp["summary"]["accuracy"]


def test_probe_report_opens_in_headless_chromium(runs):
    from browser import chromium, load

    if chromium() is None or _missing("websocket"):
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {BROWSER_MISSING}")
        pytest.skip(BROWSER_MISSING)
    for name, figures in (("cnmc", 4), ("generic", 4)):
        page = runs[name] / "report" / "index.html"
        probe = """(() => ({
            images: [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]),
            protocols: document.querySelector('#protocols-table').innerText,
        }))()"""
        result = load(page, probe)
        assert result.errors == []
        assert all(u.startswith(("file://", "data:")) for u in result.requests), result.requests
        images = result.value["images"]
        assert len(images) == figures and all(done and w > 0 and h > 0 for done, w, h in images), images
        assert "knn1_plain" in result.value["protocols"]


def test_the_report_page_holds_every_section(runs):
    html = (runs["generic"] / "report" / "index.html").read_text()
    for text in ("Protocols on the same patient-level folds", "Linear probe: C chosen per fold",
                 "Label efficiency", "Batch-effect score", "Embedding map",
                 "data:image/png;base64,"):  # fmt: skip
        assert text in html, text
    assert html.count("<img ") == 4


def test_fastall_report_remakes_the_probe_page_from_the_folder_alone(runs, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(runs["generic"], copy)
    shutil.rmtree(copy / "report")
    out = _invoke("report", str(copy)).output
    assert "4 figures" in out and (copy / "report" / "index.html").is_file()


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ks", "0,5"], "every k must be at least 1"),
        (["--ks", "a"], "comma-separated whole numbers"),
        (["--folds", "9"], "fewer than --folds 9"),
        (["--draws", "0"], "--draws"),
    ],
)
def test_bad_probe_options_are_one_line_errors(caches, tmp_path, args, message):
    res = _invoke("probe", str(caches["cnmc"]), "--out", str(tmp_path / "p"), "--no-mlp", *args, ok=False)
    assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "p").exists()


BCCD = Path(__file__).resolve().parents[1].parent / "shared/data/bccd"


@pytest.mark.skipif(not BCCD.is_dir(), reason="../shared/data/bccd (real WBC crops) is not here")
def test_probe_on_real_cells_without_patient_groups(tmp_path):
    """351 real white-cell crops, 5 imbalanced classes, no patients: images per class, no patient effect."""
    from fastall.features.extract import extract

    extract(BCCD, tmp_path / "bccd.h5", views=1, image_size=32, weights="none", device="cpu", amp=False,
            workers=0)  # fmt: skip
    out = tmp_path / "probe"
    _invoke("probe", str(tmp_path / "bccd.h5"), "--out", str(out), "--folds", "2", "--no-mlp", "--no-map",
            "--draws", "2", "--device", "cpu")  # fmt: skip
    rec = json.loads((out / "probe.json").read_text())
    assert rec["label_efficiency"]["unit"] == "images per class" and not rec["splits"]["patient_groups"]
    assert rec["batch_effect"]["warning"] is None and "own patient" in rec["batch_effect"]["note"]
    assert len(rec["cache"]["class_names"]) == 5 and rec["protocols"]["linear"]["pooled"]["accuracy"] > 0.2
    assert "embedding" not in rec and (out / "report" / "index.html").is_file()
    assert any("no patient group" in w for w in rec["warnings"])  # the dataset's caveats, as train-head's
    page = (out / "report" / "index.html").read_text()
    assert "no patient group" in page and "every image is its own patient" in page
