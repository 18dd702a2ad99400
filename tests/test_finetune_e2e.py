"""A finetune run end to end at 96 px: the CLI writes a complete run folder with the probe row, and verify,
predict, export (torch, TorchScript backend, ONNX), explain and evaluate rebuild image -> frozen layers 1-3
-> the fine-tuned stage -> head."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner

from fastall.cli import cli
from tests.extract_helpers import run_extract
from tests.finetune_helpers import FT, store_from_cache


def _cli(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output[-3000:]
    return result


def _probs(path) -> dict[str, float]:
    with open(path, newline="") as fh:
        return {r["path"]: float(r["p_all"]) for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from fastall.data.synth import synthesize

    root = tmp_path_factory.mktemp("fte2e")
    synthesize(root / "data", patients_per_class=3, images_per_patient=2, size=96, prelim=False)
    torch.set_num_threads(1)
    run_extract(root / "data", root / "plain.h5", **{**FT, "image_size": 96})
    store = store_from_cache(root / "plain.h5", root / "maps.h5", map_views=2)
    out = root / "ft"
    args = ["finetune", store, "--out", out, "--folds", "2", "--preset", "paper", "--epochs", "2"]
    result = _cli(*args, "--batch-size", "4", "--lr", "1e-3", "--no-report")
    assert "linear probe" in result.output and "fine-tuned layer4 from layer3" in result.output
    return root, out


def test_run_folder_is_complete_and_its_stage_moved(run):
    root, out = run
    assert {p.name for p in out.iterdir()} >= {"head.pt", "metrics.json", "predictions.csv", "folds.csv"}
    m = json.loads((out / "metrics.json").read_text())
    assert m["baseline"]["cv_accuracy"] is not None and m["finetune"]["map_views"] == 2
    from fastall.reporting.tables import protocol_line

    assert "fine-tuned layer4 from layer3 maps" in protocol_line(m)  # the report and the CLI say it
    assert "BatchNorm statistics frozen" in protocol_line(m)
    blob = torch.load(out / "head.pt", weights_only=True)
    from fastall.features.backbone import load_backbone

    start = load_backbone("none", backbone="resnet18")[0].layer4.state_dict()
    tuned = blob["finetune"]["stage_state_dict"]
    assert not torch.equal(start["0.conv1.weight"], tuned["layer4.0.conv1.weight"])


def test_verify_passes_on_a_finetune_run_at_96px(run):
    _, out = run
    result = _cli("verify", out, "--images", "6")
    assert "verify passed" in result.output and "recorded probs" in result.output


def test_verify_refuses_an_altered_stage(run, tmp_path):
    import shutil

    _, out = run
    copy = tmp_path / "ft"
    shutil.copytree(out, copy)
    blob = torch.load(copy / "head.pt", weights_only=True)
    blob["finetune"]["stage_state_dict"]["layer4.0.conv1.weight"] += 1
    torch.save(blob, copy / "head.pt")
    result = CliRunner().invoke(cli, ["verify", str(copy)])
    assert result.exit_code != 0 and "sha256 differs" in result.output


def test_predict_export_and_explain_use_the_fine_tuned_stage(run):
    root, out = run
    data = root / "data"
    _cli("predict", out, data, "--out", root / "p.csv")
    _cli("export", out, "--out", root / "m.pt", "--precision", "fp32")
    _cli("predict", root / "m.pt", data, "--out", root / "q.csv", "--backend", "jit")
    p, q = _probs(root / "p.csv"), _probs(root / "q.csv")
    assert p.keys() == q.keys() and max(abs(p[k] - q[k]) for k in p) < 1e-4
    # predict = the stored maps through the final stage and head (and not the backbone's own stage)
    from fastall.features.cut import recorded_cut
    from fastall.features.maps import open_maps
    from fastall.finetune.engine import Net
    from fastall.head import Head

    store = open_maps(root / "maps.h5")
    blob = torch.load(out / "head.pt", weights_only=True)
    cut = recorded_cut(store.cache.key_params, store.cache.attrs)
    head = Head.from_state(blob["head_config"], blob["state_dict"])
    rows = list(range(store.cache.n_images))
    maps = torch.from_numpy(store.read(rows, [0] * len(rows)))
    paths = [str(data / q) for q in store.cache.paths]
    for tuned, close in ((False, False), (True, True)):
        if tuned:
            cut.stage.load_state_dict(blob["finetune"]["stage_state_dict"])
        with torch.no_grad():
            cached = torch.softmax(Net(cut.stage, head).eval()(maps), 1)[:, 1].numpy()
        gap = max(abs(cached[i] - p[paths[i]]) for i in rows)
        assert (gap < 1e-3) == close, (tuned, gap)
    image = next(iter(p))
    _cli("explain", out, image, "--out", root / "explain")
    assert (root / "explain" / "explain.csv").is_file()


def test_onnx_export_of_a_finetune_run(run):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    root, out = run
    result = _cli("export", out, "--out", root / "m.onnx", "--format", "onnx")
    assert "100.0% agreement" in result.output
