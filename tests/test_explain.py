"""`fastall explain`: Grad-CAM maps of the end-to-end model, and the sanity checks that make them evidence.

Adebayo et al. 2018, "Sanity checks for saliency maps": the maps must change when the head is re-initialised
(model randomisation), be the same on a re-run (determinism), and come with the probabilities `predict`
gives (equivalence). Runs are tiny (96 px input: layer4 maps of 3x3, upsampled to 96x96).
"""

from __future__ import annotations

import csv
import json
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from e2e_helpers import images_of, shared_run
from PIL import Image

from fastall.cli import cli
from fastall.errors import FastallError
from fastall.features.gradcam import target_layer
from fastall.head import Head
from fastall.inference.explain import (
    METHODS,
    cell_mask,
    explain_batch,
    explain_paths,
    gradients_at,
    load_explainable,
    mass_inside,
)
from fastall.inference.model import LeukemiaClassifier
from fastall.inference.predict import predict_paths

needs_gradcam = pytest.mark.skipif(find_spec("pytorch_grad_cam") is None, reason="extra [explain] missing")
SIZE = 96


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    return shared_run(tmp_path_factory, image_size=SIZE)


@pytest.fixture(scope="module")
def model(e2e):
    return load_explainable(e2e.run)


@pytest.fixture(scope="module")
def images(e2e):
    return images_of(e2e, 8)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _rank_corr(maps_a: np.ndarray, maps_b: np.ndarray) -> list[float]:
    """Spearman's rank correlation of each pair of maps."""
    from scipy.stats import spearmanr

    return [float(spearmanr(a.ravel(), b.ravel())[0]) for a, b in zip(maps_a, maps_b, strict=True)]


def _random_head(model: LeukemiaClassifier, seed: int) -> LeukemiaClassifier:
    """The same model with freshly initialised head weights (same standardisation, same backbone)."""
    torch.manual_seed(seed)
    head = Head(**model.head.config())
    head.set_standardization(model.head.mean, model.head.std)
    return LeukemiaClassifier(
        model.backbone, head, image_size=SIZE, class_names=model.class_names, provenance=model.provenance
    )


@needs_gradcam
def test_frozen_backbone_breaks_plain_gradcam(model, images):
    """The failure users report, reproduced: without the hook the frozen model has no gradient to give."""
    from pytorch_grad_cam import GradCAM

    cam = GradCAM(model=model, target_layers=[model.backbone.layer4])
    try:
        with pytest.raises(RuntimeError, match="does not require grad"):
            cam(input_tensor=images[:2], targets=None)
    finally:
        cam.activations_and_grads.release()


@needs_gradcam
@pytest.mark.parametrize("method", list(METHODS))
def test_frozen_weights_and_flags_untouched(model, images, method):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    maps = explain_batch(model, images[:4], method=method)
    assert maps.cams.shape == (4, SIZE, SIZE) and maps.cams.max() > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert not any(flags.values())
    assert all(p.grad is None for p in model.parameters())
    assert not model.backbone.layer4._forward_hooks


def test_hook_leaves_the_model_output_bit_identical(model, images):
    with torch.inference_mode():
        plain = model(images)
    with torch.enable_grad(), gradients_at(model.backbone.layer4, model.head) as tap:
        hooked = model(images)
    assert torch.equal(plain, hooked.detach())
    assert isinstance(tap, torch.nn.Module)


@needs_gradcam
def test_model_randomisation_changes_the_maps(model, images):
    """A head with fresh random weights (same standardisation, same frozen backbone) must change the maps:
    mean rank correlation < 0.5 for each of 2 seeds and both classes."""
    trained = {c: explain_batch(model, images, target=c).cams for c in model.class_names}
    assert min(_rank_corr(trained["all"], trained["all"])) > 0.999
    for seed in range(2):
        random = _random_head(model, seed)
        for c in model.class_names:
            rho = _rank_corr(trained[c], explain_batch(random, images, target=c).cams)
            assert np.nanmean(rho) < 0.5, (seed, c, rho)


@needs_gradcam
@pytest.mark.parametrize("method", ["gradcam++", "layercam"])
def test_randomisation_check_has_teeth(model, images, method):
    """Grad-CAM++ and LayerCAM weigh activations more than the head here: the same check fails them
    (measured ~0.85-0.95 at 96 px; docs/explain.md). If this starts failing, the docs must change."""
    random = _random_head(model, 0)
    trained = explain_batch(model, images, method=method, target="all").cams
    rho = _rank_corr(trained, explain_batch(random, images, method=method, target="all").cams)
    assert np.nanmean(rho) > 0.5, rho


@needs_gradcam
@pytest.mark.parametrize("method", list(METHODS))
def test_same_map_twice(model, images, method):
    first = explain_batch(model, images, method=method)
    second = explain_batch(model, images, method=method)
    assert np.array_equal(first.cams, second.cams)
    assert np.array_equal(first.probs, second.probs)


@needs_gradcam
def test_probabilities_equal_predicts(model, e2e, tmp_path):
    folder = e2e.data / "C-NMC_Leukemia" / "training_data"
    preds = predict_paths(model, [folder])
    result = explain_paths(model, [folder], tmp_path / "ex")
    assert [r["path"] for r in result.rows] == preds.paths
    np.testing.assert_array_equal(np.stack([r["probs"] for r in result.rows]), preds.probs)
    assert [r["predicted"] for r in result.rows] == preds.labels


@needs_gradcam
def test_folder_outputs(e2e, tmp_path):
    folder = e2e.data / "C-NMC_Leukemia" / "training_data" / "fold_0" / "hem"
    out = tmp_path / "ex"
    result = CliRunner().invoke(
        cli, ["explain", str(e2e.run), str(folder), "--out", str(out), "--method", "gradcam++"]
    )
    assert result.exit_code == 0, result.output
    rows = _rows(out / "explain.csv")
    assert len(rows) == len(list(folder.glob("*.bmp"))) > 0
    assert set(rows[0]) >= {"path", "p_hem", "p_all", "predicted_class", "target_class", "mass_in_cell"}
    for row in rows:
        assert row["target_class"] == row["predicted_class"]
        assert Image.open(out / row["image"]).size == (SIZE, SIZE)
        assert Image.open(out / row["overlay"]).size == (SIZE, SIZE)
        cam = np.load(out / row["map"])
        assert cam.shape == (SIZE, SIZE) and cam.dtype == np.float32
        assert 0.0 <= float(row["mass_in_cell"]) <= 1.0
    html = (out / "index.html").read_text()
    assert html.count("data:image/png;base64,") == 2 * len(rows)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    meta = json.loads((out / "explain.json").read_text())
    assert meta["format"] == "fastall-explain"
    assert (meta["method"], meta["layer"]) == ("gradcam++", "resnet50.layer4")
    again = CliRunner().invoke(cli, ["explain", str(e2e.run), str(folder), "--out", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output
    one = rows[0]["path"]
    again = CliRunner().invoke(
        cli, ["explain", str(e2e.run), one, "--out", str(out), "--overwrite", "--target", "all"]
    )
    assert again.exit_code == 0, again.output
    assert [(r["path"], r["target_class"]) for r in _rows(out / "explain.csv")] == [(one, "all")]


@needs_gradcam
def test_relative_paths_resolve_under_the_data_root(e2e, tmp_path, monkeypatch):
    recorded = [r["path"] for r in _rows(e2e.run / "predictions.csv")][:3]
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["explain", str(e2e.run), *recorded, "--out", "ex"])
    assert result.exit_code == 0, result.output
    assert [Path(r["path"]) for r in _rows(tmp_path / "ex" / "explain.csv")] == [
        e2e.data.resolve() / p for p in recorded
    ]


@needs_gradcam
def test_failure_midway_leaves_no_folder(model, e2e, tmp_path, monkeypatch):
    import fastall.inference.explain as ex

    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise FastallError("disk on fire")
        return explain_batch(*args, **kwargs)

    monkeypatch.setattr(ex, "explain_batch", failing)
    with pytest.raises(FastallError, match="disk on fire"):
        explain_paths(model, [e2e.data], tmp_path / "ex", batch_size=2)
    assert list(tmp_path.iterdir()) == []


@needs_gradcam
def test_unreadable_image_is_reported_and_skipped(e2e, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    source = next((e2e.data / "C-NMC_Leukemia").rglob("*.bmp"))
    (folder / "good.bmp").write_bytes(source.read_bytes())
    (folder / "broken.bmp").write_bytes(source.read_bytes()[:300])
    result = CliRunner().invoke(cli, ["explain", str(e2e.run), str(folder), "--out", str(tmp_path / "ex")])
    assert result.exit_code == 0, result.output
    assert "broken.bmp" in result.output
    assert [Path(r["path"]).name for r in _rows(tmp_path / "ex" / "explain.csv")] == ["good.bmp"]
    assert [Path(r["path"]).name for r in _rows(tmp_path / "ex" / "skipped.csv")] == ["broken.bmp"]


def test_missing_extra_names_it(e2e, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    result = CliRunner().invoke(cli, ["explain", str(e2e.run), str(e2e.data), "--out", str(tmp_path / "ex")])
    assert result.exit_code == 1
    assert [line for line in result.output.splitlines() if line.strip()] == [
        "Error: fastall explain needs the optional extra: pip install -e '.[explain]'"
    ]
    assert not (tmp_path / "ex").exists()


def test_target_layer_is_declared_by_the_backbone(model):
    assert target_layer(model.backbone, "resnet50") is model.backbone.layer4
    with pytest.raises(FastallError, match="declares no Grad-CAM layer"):
        target_layer(model.backbone, "vgg16")


def _disk(background: int, cell: tuple[int, int, int], side: int = 64) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:side, :side]
    disk = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (side / 4) ** 2
    image = np.full((side, side, 3), background, np.uint8)
    image[disk] = cell
    return image, disk


@pytest.mark.parametrize(
    ("background", "cell"),
    [(0, (150, 90, 170)), (0, (20, 20, 30)), (235, (120, 60, 140)), (40, (200, 200, 210))],
)
def test_cell_mask(background, cell):
    image, disk = _disk(background, cell)
    assert np.array_equal(cell_mask(image), disk)


def test_mass_inside():
    image, disk = _disk(0, (150, 90, 170))
    assert mass_inside(disk.astype(np.float32), disk) == 1.0
    assert mass_inside(np.ones(disk.shape, np.float32), disk) == pytest.approx(disk.mean())
    assert np.isnan(mass_inside(np.zeros(disk.shape, np.float32), disk))
