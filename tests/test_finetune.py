"""fastall finetune: the cut, the maps store, and the two equivalence tests (cached maps = end to end)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastall.errors import CacheError
from fastall.features.cut import at_cut, cut_backbone
from fastall.finetune.config import FinetuneConfig
from fastall.finetune.engine import fit, make_net, optimizer, predict
from fastall.finetune.pixels import PixelSource
from tests.extract_helpers import run_extract, tiny_tree
from tests.finetune_helpers import FT, cut_of, norm, open_maps, pixels, source_paths, store_from_cache


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    data = tiny_tree(root / "data")
    torch.set_num_threads(1)
    run_extract(data, root / "plain.h5", **FT)
    return open_maps(store_from_cache(root / "plain.h5", root / "maps.h5"), load_features=True)


def _stats(store, rows):
    x = torch.from_numpy(store.cache.features[rows].astype(np.float32)).reshape(-1, store.cache.dim)
    return x.mean(0), x.std(0).clamp_min(1e-3)


@pytest.mark.parametrize("layer, trained", [("layer3", ("layer4",)), ("layer2", ("layer3", "layer4"))])
def test_cut_front_then_stage_is_the_backbone(layer, trained):
    from fastall.features.backbone import load_backbone

    model, info = load_backbone("none", backbone="resnet18")
    cut = cut_backbone(model, info.name, layer)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        whole = model(x)
        parts = cut.stage(cut.front(x)).mean(dim=(2, 3))
    assert cut.trained == trained
    assert torch.allclose(whole, parts, atol=1e-5)
    assert not any(p.requires_grad for p in cut.front.parameters())
    assert all(p.requires_grad for p in cut.stage.parameters())
    assert set(cut.stage.state_dict()) == {k for k in model.state_dict() if k.startswith(trained)}


def test_store_holds_the_cut_maps_of_every_view(store):
    assert store.layer == "layer3" and store.map_views == 3 and store.shape == (256, 4, 4)
    cut = cut_of(store)
    rows, views = np.array([0, 3, 5]), np.array([0, 1, 2])
    src = PixelSource(cut.front, source_paths(store), store.cache.view_params, 64, norm(store))
    expected = src.maps(pixels(store, rows), rows, views)
    got = torch.from_numpy(store.read(rows, views)).float()
    assert torch.equal(expected, got)
    # the stage on view 0's stored map gives the cache's pooled feature (up to the map's fp16 rounding)
    pooled = cut.stage(got[:1]).mean(dim=(2, 3)).detach()
    assert torch.allclose(pooled, torch.from_numpy(store.cache.features[:1, 0]).float(), rtol=2e-2, atol=2e-2)


def test_plain_cache_is_refused_saying_how_to_make_a_store(store):
    with pytest.raises(CacheError, match=r"holds no activation maps.*--maps layer3"):
        open_maps(store.cache.path.with_name("plain.h5"))


def test_one_step_from_pixels_equals_one_step_from_cached_maps(store):
    """End to end (decode, augment, frozen layers 1-3, stage, head) against the store: same gradients and
    same updated weights, to fp32 tolerance."""
    cut, cfg = cut_of(store), FinetuneConfig(lr=1e-3, stage_lr=0.5)
    rows, views = np.arange(6), np.array([0, 1, 2, 1, 2, 0])
    y = torch.from_numpy(store.cache.labels[rows])
    nets = [make_net(cut.stage, cfg, 2, _stats(store, rows), seed=0) for _ in range(2)]
    images = pixels(store, rows)
    params = torch.from_numpy(store.cache.view_params[rows, views])
    from fastall.preprocess import preprocess

    x = preprocess(images, 64, *norm(store), params)
    e2e_maps = at_cut(cut.front(x.contiguous(memory_format=torch.channels_last)))
    assert not e2e_maps.requires_grad
    cached = torch.from_numpy(store.read(rows, views))
    grads, after = [], []
    for net, maps in zip(nets, (e2e_maps, cached), strict=True):
        opt = optimizer(net, cfg)
        net.train_mode("frozen")
        torch.manual_seed(7)
        F.cross_entropy(net(maps), y).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
        opt.step()
        after.append({n: p.detach().clone() for n, p in net.named_parameters()})
    assert any(g.abs().sum() > 0 for n, g in grads[0].items() if n.startswith("pooled.stage.layer4"))
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6), name
        assert torch.allclose(after[0][name], after[1][name], rtol=1e-5, atol=1e-7), name
    moved = after[0]["pooled.stage.layer4.0.conv1.weight"] - nets[0].pooled.stage.layer4[0].conv1.weight
    assert moved.abs().max() == 0  # after[] is the stepped weight: the net holds it too
    start = make_net(cut.stage, cfg, 2, _stats(store, rows), seed=0)
    assert not torch.allclose(
        start.pooled.stage.layer4[0].conv1.weight, after[0]["pooled.stage.layer4.0.conv1.weight"]
    )


def test_two_epochs_from_pixels_and_from_the_store_predict_the_same(store):
    cut = cut_of(store)
    cfg = FinetuneConfig(lr=1e-3, epochs=2, patience=None, batch_size=4)
    rows = np.arange(store.cache.n_images)
    labels = store.cache.labels
    e2e = PixelSource(cut.front, source_paths(store), store.cache.view_params, 64, norm(store))
    probs = []
    for source in (e2e, store):
        net = make_net(cut.stage, cfg, 2, _stats(store, rows), seed=1)
        trained = fit(net, source, labels, rows, cfg, views=[0, 1, 2], seed=3)
        assert trained.epochs_run == 2 and trained.best_epoch == 2
        probs.append(predict(trained.net, source, rows))
    start = predict(make_net(cut.stage, cfg, 2, _stats(store, rows), seed=1), store, rows)
    assert not np.allclose(start, probs[1], atol=1e-4)  # training moved it
    np.testing.assert_allclose(probs[0], probs[1], rtol=1e-4, atol=1e-5)


def test_frozen_batchnorm_keeps_its_statistics_and_train_updates_them(store):
    cut = cut_of(store)
    rows = np.arange(store.cache.n_images)
    for bn, changes in (("frozen", False), ("train", True)):
        cfg = FinetuneConfig(epochs=1, patience=None, bn=bn, batch_size=4)
        net = make_net(cut.stage, cfg, 2, _stats(store, rows), seed=0)
        before = copy.deepcopy(net.pooled.stage.layer4[0].bn1.running_mean)
        fit(net, store, store.cache.labels, rows, cfg, views=[0, 1, 2], seed=0)
        assert (not torch.equal(before, net.pooled.stage.layer4[0].bn1.running_mean)) == changes, bn


@pytest.fixture(scope="module")
def run_store(tmp_path_factory):
    from fastall.data.synth import synthesize

    root = tmp_path_factory.mktemp("ftrun")
    synthesize(root / "data", patients_per_class=5, images_per_patient=2, size=48, prelim=False)
    torch.set_num_threads(1)
    run_extract(root / "data", root / "plain.h5", **FT)
    return store_from_cache(root / "plain.h5", root / "maps.h5")


def test_finetune_run_folder_has_train_heads_files_the_probe_row_and_the_stage(run_store, tmp_path):
    from fastall.finetune.run import finetune
    from fastall.training.config import TrainOptions

    options = TrainOptions(folds=2, progress=False, report=False)
    result = finetune(run_store, tmp_path / "ft", FinetuneConfig(epochs=2, batch_size=4), options)
    files = {p.name for p in result.out.iterdir()}
    assert {"metrics.json", "head.pt", "folds.csv", "predictions.csv"} <= files
    m = result.metrics
    assert m["baseline"]["cv_accuracy"] is not None and m["verdict"]["verdict"]
    assert m["finetune"]["trained"] == ["layer4"] and m["finetune"]["bn"] == "frozen"
    assert len(m["finetune"]["selection"]["folds"]) == 2
    blob = torch.load(result.out / "head.pt", weights_only=True)
    from fastall.features.backbone import state_dict_sha256

    stage = blob["finetune"]["stage_state_dict"]
    assert state_dict_sha256(stage) == blob["finetune"]["stage_sha256"] == m["finetune"]["stage_sha256"]
    assert any(w["code"] == "finetune_bn" for w in m["warnings"])


def test_finetune_refuses_a_stage_it_cannot_train_and_a_plain_cache(run_store, tmp_path):
    from fastall.errors import FastallError
    from fastall.finetune.run import finetune

    with pytest.raises(FastallError, match=r"--train layer3: .*after layer3.*layer4"):
        finetune(run_store, tmp_path / "a", train="layer3")
    with pytest.raises(CacheError, match="--maps layer3"):
        finetune(run_store.with_name("plain.h5"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_tune_tries_every_configuration_on_each_inner_split(run_store, tmp_path):
    from fastall.finetune.run import finetune
    from fastall.training.config import TrainOptions

    options = TrainOptions(folds=2, progress=False, report=False, tune="lr=1e-4,1e-3", probe=False)
    result = finetune(run_store, tmp_path / "t", FinetuneConfig(epochs=1, batch_size=4), options)
    ft = result.metrics["finetune"]
    assert [c["lr"] for c in ft["configs"]] == [1e-4, 1e-3]
    assert all(len(f["inner_val_loss"]) == 2 for f in ft["selection"]["folds"])
    assert result.metrics["tune"]["grid"] == "lr=1e-4,1e-3"


def test_an_inner_split_too_small_trains_a_fixed_schedule_and_says_so(run_store, tmp_path, monkeypatch):
    """As train-head: one configuration whose fold cannot be split again trains its epochs, with a warning;
    with --tune (several configurations) the same fold is an error."""
    import fastall.finetune.run as ft_run
    from fastall.errors import FastallError
    from fastall.training.config import TrainOptions

    def no_split(*args, **kwargs):
        raise FastallError("selection on an inner split needs at least 2 training patients of each class")

    monkeypatch.setattr(ft_run, "inner_splits", no_split)
    options = TrainOptions(folds=2, progress=False, report=False, probe=False)
    result = ft_run.finetune(run_store, tmp_path / "f", FinetuneConfig(epochs=2, batch_size=4), options)
    folds = result.metrics["finetune"]["selection"]["folds"]
    assert [f["epochs"] for f in folds] == [2, 2]
    said = [w["text"] for w in result.metrics["warnings"] if w["code"] == "selection"]
    assert len(said) == 2 and all("fixed schedule" in t for t in said)
    tuned = TrainOptions(folds=2, progress=False, report=False, probe=False, tune="lr=1e-4,1e-3")
    with pytest.raises(FastallError, match="inner split"):
        ft_run.finetune(run_store, tmp_path / "g", FinetuneConfig(epochs=1, batch_size=4), tuned)


def test_a_store_whose_maps_do_not_fit_its_record_is_refused(store, tmp_path):
    import shutil

    import h5py

    bad = tmp_path / "bad.h5"
    shutil.copy(store.path, bad)
    with h5py.File(bad, "r+") as f:
        del f["maps"]
        f.create_dataset("maps", data=np.zeros((store.cache.n_images, 3, 8, 4, 4), np.float16))
    with pytest.raises(CacheError, match=r"maps dataset float16 .* expected float16"):
        open_maps(bad)


def test_a_net_started_at_the_probe_computes_the_probe_exactly():
    """The default preset's start: the head's logits are the linear map ``A x + c`` on raw pooled features."""
    rng = np.random.default_rng(0)
    dim, classes = 16, 3
    x = torch.from_numpy(rng.normal(2.0, 3.0, size=(10, dim)).astype(np.float32))
    a, c = rng.normal(size=(classes, dim)), rng.normal(size=classes)
    stats = (x.mean(0), x.std(0))
    net = make_net(torch.nn.Identity(), FinetuneConfig(hidden=32), classes, stats, seed=0, linear=(a, c))
    net.head.eval()
    with torch.no_grad():
        got = net.head(x).double().numpy()
    assert np.allclose(got, x.double().numpy() @ a.T + c, atol=1e-4)
