"""LeukemiaClassifier and its artifacts: the timm-like contract, run refusals, export round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from e2e_helpers import cache_with, copy_run, edit_head, images_of, shared_run

from fastall.cli import cli
from fastall.errors import FastallError
from fastall.inference.artifacts import load_export, load_model, load_run
from fastall.inference.export import export_model, export_run


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def model(e2e):
    return load_run(e2e.run)


@pytest.fixture(scope="module")
def images(e2e):
    return images_of(e2e, 4)


def test_timm_like_contract(model, images):
    with torch.inference_mode():
        feats = model.forward_features(images)
        logits = model(images)
    assert feats.shape == (4, 2048) and feats.dtype == torch.float32
    assert torch.equal(logits, model.forward_head(feats))
    probs = model.predict_proba(images)
    assert torch.allclose(probs.sum(1), torch.ones(4)) and model.class_names == ["hem", "all"]
    assert model.image_size == 32 and model.precision == "fp32"


def test_view_params_reproduce_views(model, images):
    from fastall.features.augment import draw_view_params

    params = torch.from_numpy(draw_view_params(0, range(4), 2))
    with torch.inference_mode():
        plain = model.forward_features(images)
        identity = model.forward_features(images, params[:, 0])
        augmented = model.forward_features(images, params[:, 1])
    assert torch.equal(plain, identity)
    assert not torch.allclose(plain, augmented)


def test_from_run_refuses_a_mismatched_cache(e2e, tmp_path):
    other = cache_with(e2e, tmp_path / "other.h5", image_size=64, weights_sha256="0" * 64)
    with pytest.raises(FastallError, match=r"image_size: 32 -> 64.*weights_sha256") as err:
        load_run(e2e.run, cache=other)
    assert "\n" not in str(err.value)


def test_from_run_refuses_other_weights(e2e, tmp_path):
    from fastall.features.backbone import load_backbone

    other, _ = load_backbone("none", seed=3)
    torch.save(other.state_dict(), tmp_path / "w.pth")
    with pytest.raises(FastallError, match="sha256"):
        load_run(e2e.run, weights_path=tmp_path / "w.pth")


def _not_a_head(run: Path, case: str) -> None:
    head = run / "head.pt"
    if case == "text":
        head.write_text("hello")
    elif case == "pickle":
        torch.save({"format": "fastall-head", "evil": Path("x")}, head)  # needs unpickling: refused
    elif case == "format":
        torch.save({"format": "other"}, head)
    elif case == "list":
        torch.save([1, 2], head)


@pytest.mark.parametrize("case", ["text", "pickle", "format", "list"])
def test_from_run_refuses_files_that_are_not_heads(e2e, tmp_path, case):
    run = copy_run(e2e, tmp_path / "run")
    _not_a_head(run, case)
    with pytest.raises(FastallError, match="head.pt") as err:
        load_run(run)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"format_version": 9}, "format version 9"),
        ({"class_names": ["a", "b", "c"]}, "3 class names"),
        ({"head_config": {"in_features": 2048, "hidden": 7, "dropout": 0.5, "classes": 2}}, "do not fit"),
        ({"cache_key": "0" * 64}, "file altered"),
    ],
)
def test_from_run_refuses_inconsistent_heads(e2e, tmp_path, change, match):
    run = copy_run(e2e, tmp_path / "run")
    edit_head(run, **change)
    with pytest.raises(FastallError, match=match):
        load_run(run)


def test_from_run_refuses_a_feature_dim_mismatch(e2e, tmp_path):
    from fastall.head import Head

    run = copy_run(e2e, tmp_path / "run")
    head = Head(in_features=1024, hidden=8)
    edit_head(run, state_dict=head.state_dict(), head_config=head.config())
    with pytest.raises(FastallError, match="2048 features but the head expects 1024"):
        load_run(run)


def test_export_round_trip_gives_the_same_logits(e2e, model, images, tmp_path):
    out = export_run(e2e.run, tmp_path / "model.pt")
    blob = torch.load(out, weights_only=True)
    assert blob["format"] == "fastall-model" and blob["class_names"] == ["hem", "all"]
    assert blob["image_size"] == 32 and blob["provenance"]["key_params"]["weights"] == "none"
    loaded = load_export(out)
    with torch.inference_mode():
        assert torch.equal(loaded(images), model(images))
    assert not list(tmp_path.glob("*.tmp"))


def test_export_with_int8_reloads_the_same_quantised_model(model, images, e2e, tmp_path):
    int8 = load_run(e2e.run).optimize("int8", calibration=images_of(e2e, 8))
    loaded = load_model(export_model(int8, tmp_path / "model.pt"))
    assert loaded.precision == "int8"
    with torch.inference_mode():
        assert torch.allclose(loaded(images), int8(images), atol=1e-4)


def test_export_detects_tampering(e2e, tmp_path):
    out = export_run(e2e.run, tmp_path / "model.pt")
    blob = torch.load(out, weights_only=True)
    blob["backbone_state_dict"]["conv1.weight"][0, 0, 0, 0] += 1
    torch.save(blob, out)
    with pytest.raises(FastallError, match="checksum"):
        load_export(out)


def test_export_auto_precision_is_checked_recorded_and_reloaded(e2e, images, tmp_path):
    result = CliRunner().invoke(
        cli, ["export", str(e2e.run), "--out", str(tmp_path / "m.pt"), "--images", "12"]
    )
    assert result.exit_code == 0 and (tmp_path / "m.pt").is_file(), result.output
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    check = blob["precision_check"]
    assert blob["precision"] == check["precision"] in ("int8", "bf16", "fp32")
    assert [t["precision"] for t in check["trials"]][0] == "int8" and check["images"] == 12
    assert check["precision"] == "fp32" or check["agreement"] >= 0.995
    assert f"{check['precision']}, " in result.stdout and "agrees with fp32" in result.stderr
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.precision == check["precision"]


def test_export_refuses_an_explicit_precision_that_disagrees(e2e, tmp_path, monkeypatch):
    import fastall.inference.precision as precision

    monkeypatch.setattr(precision, "MIN_PRECISION_AGREEMENT", 1.01)
    result = CliRunner().invoke(
        cli, ["export", str(e2e.run), "--out", str(tmp_path / "m.pt"), "--precision", "bf16", "--images", "4"]
    )
    assert result.exit_code == 1 and "bf16 agrees with fp32 on only" in result.output
    assert not (tmp_path / "m.pt").exists()


def test_export_cli_and_unwritable_target(e2e, tmp_path):
    result = CliRunner().invoke(
        cli, ["export", str(e2e.run), "--out", str(tmp_path / "no" / "m.pt"), "--precision", "fp32"]
    )
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "cannot write" in result.output
    assert not (tmp_path / "no").exists()


def test_optimize_returns_a_new_model_and_leaves_the_original(model, images):
    fast = model.optimize("bf16", backend="eager")
    assert fast is not model and fast.precision == "bf16" and fast.runtime is not None
    assert model.precision == "fp32" and model.runtime is None and model.backend == "eager"
    assert fast.backbone is model.backbone and fast.head is model.head
    with torch.inference_mode():
        assert torch.equal(model(images), model.optimize("fp32", backend="eager")(images))


def test_predict_loader_reads_each_file_once(e2e, monkeypatch):
    import fastall.inference.artifacts as artifacts
    from fastall.inference.artifacts import load_for_inference

    reads: list[str] = []
    real_load, real_read_cache = torch.load, artifacts.read_cache

    def counting_load(path, *args, **kwargs):
        reads.append(Path(path).name)
        return real_load(path, *args, **kwargs)

    def counting_read_cache(path, *args, **kwargs):
        reads.append(Path(path).name)
        return real_read_cache(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    monkeypatch.setattr(artifacts, "read_cache", counting_read_cache)
    model = load_for_inference(e2e.run, precision="int8")
    assert model.precision == "int8"
    assert sorted(reads) == sorted(["head.pt", e2e.cache.name])


def test_head_file_format_is_shared_with_training(e2e):
    from fastall.head import HEAD_FORMAT, HEAD_VERSION, Head
    from fastall.training import run_outputs

    blob = torch.load(Path(e2e.run) / "head.pt", weights_only=True)
    assert (blob["format"], blob["format_version"]) == (HEAD_FORMAT, HEAD_VERSION)
    assert run_outputs.HEAD_FORMAT is HEAD_FORMAT
    head = Head.from_state(None, blob["fold_state_dicts"][0])
    assert head.config() == {**blob["head_config"], "dropout": 0.5} and not head.training
    with pytest.raises(FastallError, match="do not fit") as err:
        Head.from_state({**blob["head_config"], "hidden": 3}, blob["state_dict"])
    assert "\n" not in str(err.value)
