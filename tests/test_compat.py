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
    """Every recorded row: the 18 out-of-fold rows through their fold's head, the 3 test rows through the
    final head and through the mean of the fold heads (the ensemble), and every predicted class. The run
    predicted in bf16 and this replays in fp32: measured max |Δp| 9e-4 over the 21 rows."""
    record = _load_head(FIXTURE / "run" / "head.pt")
    cache = read_cache(FIXTURE / "cache.h5")
    assert record["cache_key"] == cache.key and record["class_names"] == cache.class_names
    dropout = record["head_config"]["dropout"]
    head = head_from_state_dict(record["state_dict"], dropout).eval()
    folds = [head_from_state_dict(s, dropout).eval() for s in record["fold_state_dicts"]]
    assert head.config() == record["head_config"] and len(folds) == 2
    rows = list(csv.DictReader((FIXTURE / "run" / "predictions.csv").open()))
    assert len(rows) == cache.n_images == 21
    assert sorted(r["split"] for r in rows).count("test") == 3
    index = {p: i for i, p in enumerate(cache.paths)}

    def p_all(model: torch.nn.Module, row: dict) -> float:
        feats = torch.from_numpy(cache.features[[index[row["path"]]], 0]).float()
        with torch.no_grad():
            return torch.softmax(model(feats), dim=1)[0, 1].item()

    for row in rows:
        if row["split"] == "test":
            got = p_all(head, row)
            ensemble = sum(p_all(f, row) for f in folds) / len(folds)
            assert abs(ensemble - float(row["probability_ensemble"])) <= 1.5e-3, row
        else:
            got = p_all(folds[int(row["fold"])], row)
        assert abs(got - float(row["probability"])) <= 1.5e-3, (row, got)
        assert row["prediction"] == cache.class_names[int(got >= 0.5)], row


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
