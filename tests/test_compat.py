"""Files written by fastall 0.1.0 (tests/fixtures/v0_1, never regenerated) still load and mean the same."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from fastall.features.cache import read_cache
from fastall.head import head_from_state_dict

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "v0_1"


def _load_head(path: Path) -> dict:
    from fastall.inference.artifacts import read_head

    return read_head(path)


def test_the_old_cache_reads_and_trains(tmp_path, one_thread):
    from click.testing import CliRunner

    from fastall.cli import cli

    cache = read_cache(FIXTURE / "cache.h5")
    assert (cache.n_images, cache.n_views, cache.dim) == (21, 2, 2048)
    assert cache.class_names == ["hem", "all"] and cache.features.dtype == np.float16
    assert np.isfinite(cache.features.astype(np.float32)).all()
    assert cache.key_params["weights"] == "none" and cache.key_params["image_size"] == 32
    copy = tmp_path / "old.h5"
    shutil.copy(FIXTURE / "cache.h5", copy)
    run = tmp_path / "run"
    args = ["train-head", str(copy), "--out", str(run), "--folds", "2", "--epochs", "1", "--hidden", "8"]
    result = CliRunner().invoke(cli, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert len(json.loads((run / "metrics.json").read_text())["folds"]) == 2 and (run / "head.pt").is_file()


def test_the_old_run_loads_and_its_head_gives_the_recorded_predictions():
    record = _load_head(FIXTURE / "run" / "head.pt")
    cache = read_cache(FIXTURE / "cache.h5")
    assert record["cache_key"] == cache.key and record["class_names"] == cache.class_names
    head = head_from_state_dict(record["state_dict"], record["head_config"]["dropout"]).eval()
    assert head.config() == record["head_config"] and len(record["fold_state_dicts"]) == 2
    rows = list(csv.DictReader((FIXTURE / "run" / "predictions.csv").open()))
    test = [r for r in rows if r["split"] == "test"]
    index = {p: i for i, p in enumerate(cache.paths)}
    feats = torch.from_numpy(cache.features[[index[r["path"]] for r in test], 0])
    with torch.no_grad():
        p_all = torch.softmax(head(feats), dim=1)[:, 1].numpy()
    recorded = np.array([float(r["probability"]) for r in test])
    assert len(test) == 3 and np.allclose(p_all, recorded, atol=0.005), (p_all, recorded)


def test_the_old_metrics_parse():
    metrics = json.loads((FIXTURE / "run" / "metrics.json").read_text())
    assert metrics["format"] == "fastall-run" and metrics["fastall_version"] == "0.1.0"
    assert len(metrics["folds"]) == 2 and metrics["config"]["hidden"] == 16
    assert 0.0 <= metrics["summary"]["accuracy"] <= 1.0 and metrics["config"]["precision"] == "bf16"


def test_the_old_run_builds_the_end_to_end_model(one_thread):
    """The recorded random-init backbone is rebuilt bit for bit (its sha256 is checked on load)."""
    from fastall.inference.artifacts import load_run

    model = load_run(FIXTURE / "run")
    assert model.image_size == 32 and model.class_names == ["hem", "all"]
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert model(images).shape == (2, 2)
