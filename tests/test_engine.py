"""The engine's parts: the stacked Adam (fused and plain paths against torch.optim.Adam), the per-epoch
history contract of HeadResult and metrics.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from featcache import make_feature_cache

import fastall.head
from fastall.features.cache import read_cache
from fastall.head import Head, head_parameters
from fastall.training import optim
from fastall.training.config import HISTORY_KEYS, HeadConfig, StackData, TrainOptions
from fastall.training.engine import Stack
from fastall.training.layout import StackLayout
from fastall.training.optim import StackedAdam
from fastall.training.stacked import forward_backward
from fastall.training.streams import fold_statistics, init_head
from fastall.training.train_head import train_head

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = [(3, 8, 5), (3, 1, 5), (3, 2, 5), (3, 1, 2)]  # W1, b1, W2, b2 of 3 heads
LR = [1e-3, 3e-3, 1e-2]
DECAY = [0.0, 1e-2, 0.0]
ACTIVE = [[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 1, 1]]  # step s: which heads update


def _state(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g) for s in SHAPES]
    grads = [[torch.randn(s, generator=g) for s in SHAPES] for _ in ACTIVE]
    return params, grads


def _run_stacked(fused: bool) -> list[torch.Tensor]:
    params, grads = _state()
    adam = StackedAdam(params, fused=fused)
    plan = adam.plan(
        0,
        torch.tensor(LR, dtype=torch.float64),
        torch.tensor(DECAY, dtype=torch.float64),
        torch.tensor(ACTIVE, dtype=torch.bool),
    )
    for s, update in enumerate(plan):
        for g, new in zip(adam.grads, grads[s], strict=True):
            g.copy_(new)
        adam.step(update)
    assert adam.steps[:, 0].tolist() == [sum(r[i] for r in ACTIVE) for i in range(3)]
    return adam.params


def _run_torch() -> list[torch.Tensor]:
    params, grads = _state()
    out = [p.clone() for p in params]
    for i in range(3):
        head = [torch.nn.Parameter(p[i].clone()) for p in params]
        opt = torch.optim.Adam(head, lr=LR[i], weight_decay=DECAY[i])
        for s, row in enumerate(ACTIVE):
            if row[i]:
                for p, g in zip(head, grads[s], strict=True):
                    p.grad = g[i].clone()
                opt.step()
        for o, p in zip(out, head, strict=True):
            o[i] = p.detach()
    return out


def test_stacked_adam_fused_and_plain_paths_match_torch_adam():
    """Per-head lr and weight decay, heads skipping steps: both paths are torch.optim.Adam."""
    reference = _run_torch()
    for fused in (True, False):
        got = _run_stacked(fused)
        for g, r in zip(got, reference, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7, msg=f"fused={fused}")


def test_an_inactive_head_is_left_exactly_as_it_was():
    for fused in (True, False):
        params, grads = _state()
        before = [p.clone() for p in params]
        adam = StackedAdam(params, fused=fused)
        active = torch.tensor([[True, False, True]])
        (update,) = adam.plan(
            0, torch.tensor(LR, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), active
        )
        for g, new in zip(adam.grads, grads[0], strict=True):
            g.copy_(new)
        adam.step(update)
        for p, q in zip(params, before, strict=True):
            assert torch.equal(p[1], q[1]) and not torch.equal(p[0], q[0])
        assert adam.steps[1].tolist() == [0.0] * 4


@pytest.mark.skipif(not hasattr(torch, "_fused_adam_"), reason="this torch has no private fused Adam")
def test_private_fused_adam_and_its_public_fallback_agree(monkeypatch):
    private = _run_stacked(True)
    monkeypatch.setattr(optim, "USE_PRIVATE_FUSED", False)
    public = _run_stacked(True)
    for a, b in zip(private, public, strict=True):
        assert torch.equal(a, b)


def test_the_cpu_uses_the_fused_kernel():
    """A broken probe would silently fall back to the (slower) plain path."""
    assert StackedAdam([torch.zeros(2, 3)]).fused


def _fb_case(seed: int, hidden: int = 7) -> tuple:
    """Two heads, 11 rows (two of them padding, weight 0), dropout 0.5 masks, uneven row weights."""
    g = torch.Generator().manual_seed(seed)
    m, b, d, k = 2, 11, 6, 3
    params = [
        torch.randn(m, hidden, d, generator=g) * 0.5,
        torch.randn(m, hidden, generator=g) * 0.1,
        torch.randn(m, k, hidden, generator=g) * 0.5,
        torch.randn(m, k, generator=g) * 0.1,
    ]
    x = torch.randn(m, b, d, generator=g)
    mask = (torch.rand(m, b, hidden, generator=g) >= 0.5).float() / 0.5
    w = torch.rand(m, b, 1, generator=g) + 0.1
    w[:, -2:] = 0.0
    w /= w.sum(1, keepdim=True)
    y = torch.randint(0, k, (m, b), generator=g)
    target = torch.nn.functional.one_hot(y, k).float() * w
    return params, y, x, mask, w, target


def _autograd_grads(params, y, x, mask, w) -> list[torch.Tensor]:
    """The same loss written plainly with torch.nn functions, in float64, differentiated by autograd."""
    leaves = [p.double().requires_grad_() for p in params]
    W1, b1, W2, b2 = leaves
    hidden = torch.relu(x.double() @ W1.transpose(1, 2) + b1.unsqueeze(1)) * mask.double()
    logits = hidden @ W2.transpose(1, 2) + b2.unsqueeze(1)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")
    (nll * w.double().squeeze(2)).sum().backward()
    return [p.grad for p in leaves]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forward_backward_gradients_equal_autograd_on_one_step(seed):
    """Every parameter's gradient, with dropout and row weights (padding rows at 0), against float64 autograd
    at fp32 round-off: a 1 % error in any one gradient is 1e4 times the tolerance."""
    params, y, x, mask, w, target = _fb_case(seed)
    grads = [torch.full_like(p, float("nan")) for p in params]
    prob = forward_backward(params, grads, x, mask, w, target)
    reference = _autograd_grads(params, y, x, mask, w)
    for name, got, want in zip(("W1", "b1", "W2", "b2"), grads, reference, strict=True):
        assert got.dtype == torch.float32 and got.shape == want.shape
        scale = want.abs().max().item()
        assert scale > 1e-3, name  # a gradient that vanished would make the comparison empty
        err = (got.double() - want).abs().max().item()
        assert err <= 1e-6 * scale, f"{name}: max |Δ| {err:.3g} against max |g| {scale:.3g}"
    want_prob = torch.softmax(
        (
            torch.relu(x.double() @ params[0].double().transpose(1, 2) + params[1].double().unsqueeze(1))
            * mask.double()
        )
        @ params[2].double().transpose(1, 2)
        + params[3].double().unsqueeze(1),
        -1,
    )
    torch.testing.assert_close(prob.double(), want_prob, rtol=0, atol=1e-6)


def test_forward_backward_in_bf16_uses_its_scratch_buffers_right():
    """The bf16 path (W1 and its gradient through the w1c/g1c scratch) against float64 autograd on the same
    bf16-rounded inputs, at bf16 tolerance: a plumbing check (a stale scratch buffer or a dropped copy is far
    outside it), not a 1 % check (the fp32 test above is that)."""
    params, y, x, mask, w, target = _fb_case(3)
    xb = x.to(torch.bfloat16)
    grads = [torch.full_like(p, float("nan")) for p in params]
    w1c, g1c = (torch.full(params[0].shape, 7.0, dtype=torch.bfloat16) for _ in range(2))  # stale contents
    forward_backward(params, grads, xb, mask, w, target, w1c=w1c, g1c=g1c)
    rounded = [params[0].to(torch.bfloat16).float(), *params[1:]]
    reference = _autograd_grads(rounded, y, xb.float(), mask, w)
    for name, got, want in zip(("W1", "b1", "W2", "b2"), grads, reference, strict=True):
        err = (got.double() - want).abs().max().item()
        assert err <= 3e-2 * want.abs().max().item(), f"{name}: max |Δ| {err:.3g}"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_feature_cache(
        tmp_path_factory.mktemp("e") / "c.h5", patients=(8, 10), images_per_patient=10, dim=32, views=3
    )


def test_the_engine_trains_the_same_on_either_adam_path(cache):
    c = read_cache(cache)
    rows = np.arange(c.n_images)
    folds = [(rows[rows % 4 != k], rows[rows % 4 == k]) for k in range(2)]
    data = StackData(torch.from_numpy(c.features), c.labels, 2, folds, rows)
    stats = fold_statistics(data.features, [f[0] for f in folds] + [rows], data.train_views())
    configs = [
        (0, HeadConfig(hidden=16, epochs=3, batch_size=8, lr=3e-3, weight_decay=1e-3, patience=1)),
        (1, HeadConfig(hidden=16, epochs=2, batch_size=8, lr=1e-3, dropout=0.2)),
    ]
    out = []
    for fused in (True, False):
        stack = Stack(data, configs, final=True, seed=2, precision="fp32", stats=stats, chunk=6, fused=fused)
        stack.train()
        out.append(stack.results(tta=False))
    for a, b in zip(*out, strict=True):
        assert (a.best_epoch, a.epochs_run) == (b.best_epoch, b.epochs_run)
        assert a.val_loss_history == pytest.approx(b.val_loss_history, rel=1e-5)
        for name in a.state:
            torch.testing.assert_close(a.state[name], b.state[name], rtol=1e-4, atol=1e-5)


def test_history_contract_in_results_and_metrics_json(cache, tmp_path):
    config = HeadConfig(hidden=16, epochs=8, lr=3e-2, patience=1)
    result = train_head(cache, tmp_path / "run", config, TrainOptions(folds=3, device="cpu", progress=False))
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["history"] == json.loads(json.dumps(result.metrics["history"]))
    history = m["history"]
    assert [h["fold"] for h in history["folds"]] == [0, 1, 2]
    for h, fold in zip(history["folds"], m["folds"], strict=True):
        n = h["epochs_run"]
        assert n == fold["epochs_run"] and 1 <= n <= 8
        assert all(len(h[k]) == n for k in HISTORY_KEYS)
        assert h["val_loss"] == fold["val_loss_history"] and h["lr"] == fold["lr_history"]
        best = h["best_epoch"]
        assert best == fold["best_epoch"] == int(np.argmin(h["val_loss"])) + 1
        assert h["val_loss"][best - 1] == fold["val_loss"]
        assert h["val_accuracy"][best - 1] == pytest.approx(fold["accuracy"], abs=1e-6)
        assert n == 8 or n - best == 1  # early stopping: patience epochs without a lower loss
        assert all(math.isfinite(x) and x > 0 for x in h["train_loss"])
    assert any(h["epochs_run"] < 8 for h in history["folds"])
    final = history["final"]
    assert final["val_loss"] == [] and final["val_accuracy"] == []
    assert len(final["train_loss"]) == len(final["lr"]) == final["epochs_run"] >= final["best_epoch"]
    assert final["best_epoch"] == m["final_head"]["epochs"]
    assert final["train_loss"][-1] < final["train_loss"][0]


@pytest.mark.parametrize("chunk", [1, 6])
def test_the_vmap_engine_trains_as_the_hand_written_one(cache, chunk):
    """functional_call + vmap over the one Head (autograd, torch.optim.Adam) and the hand-written step train
    the same heads to fp32 round-off: per-head learning rates, weight decay, dropout, class weights, early
    stopping, an unstandardised head, folds of different lengths and the final head (chunk 1: the plain call;
    chunk 6: vmap)."""
    c = read_cache(cache)
    rows = np.arange(c.n_images)
    folds = [(rows[rows % 4 != k], rows[rows % 4 == k]) for k in range(2)]
    folds[1] = (folds[1][0][:-9], folds[1][1])  # one fold a step shorter: heads that sit out a step
    data = StackData(torch.from_numpy(c.features), c.labels, 2, folds, rows)
    stats = fold_statistics(data.features, [f[0] for f in folds] + [rows], data.train_views())
    configs = [
        (0, HeadConfig(hidden=16, epochs=3, batch_size=8, lr=3e-3, weight_decay=1e-3, patience=1)),
        (1, HeadConfig(hidden=16, epochs=2, batch_size=8, lr=1e-3, dropout=0.2, class_weight="balanced")),
        (2, HeadConfig(hidden=16, epochs=2, batch_size=8, lr=2e-3, standardize=False, plateau_patience=0)),
    ]
    out = []
    for engine in ("stacked", "vmap"):
        stack = Stack(
            data, configs, final=True, seed=3, precision="fp32", stats=stats, chunk=chunk, engine=engine
        )
        stack.train()
        out.append(stack.results(tta=False))
    moved = 0.0
    for a, b in zip(*out, strict=True):
        assert (a.config, a.fold, a.best_epoch, a.epochs_run) == (
            b.config,
            b.fold,
            b.best_epoch,
            b.epochs_run,
        )
        assert a.history["train_loss"] == pytest.approx(b.history["train_loss"], rel=1e-5)
        assert a.val_loss_history == pytest.approx(b.val_loss_history, rel=1e-5)
        assert a.history["lr"] == b.history["lr"]
        for name in a.state:
            torch.testing.assert_close(a.state[name], b.state[name], rtol=1e-4, atol=1e-5, msg=name)
        init = init_head(3, a.fold, data.dim, 16, 2)["fc1.weight"]
        moved = max(moved, (a.state["fc1.weight"] - init).abs().max().item())
    assert moved > 1e-3  # the heads trained: equal states are not two untouched initialisations


def test_an_unknown_engine_is_refused(cache):
    c = read_cache(cache)
    rows = np.arange(c.n_images)
    data = StackData(
        torch.from_numpy(c.features), c.labels, 2, [(rows[rows % 2 == 0], rows[rows % 2 == 1])], rows
    )
    stats = fold_statistics(data.features, [data.folds[0][0]], data.train_views())
    with pytest.raises(ValueError, match="engine"):
        Stack(
            data,
            [(0, HeadConfig(hidden=8))],
            final=False,
            seed=0,
            precision="fp32",
            stats=stats,
            chunk=1,
            engine="jax",
        )


def test_the_stack_layout_is_heads_named_parameters(cache, monkeypatch):
    """The stack's parameters are Head's own (names, order, shapes; head i's state dict loads into a Head
    strictly), and a layer added to Head becomes a stack parameter with nothing else edited."""
    c = read_cache(cache)
    rows = np.arange(c.n_images)
    data = StackData(
        torch.from_numpy(c.features), c.labels, 2, [(rows[rows % 2 == 0], rows[rows % 2 == 1])], rows
    )
    stats = fold_statistics(data.features, [data.folds[0][0]], data.train_views())
    layout = StackLayout(data, [(0, HeadConfig(hidden=8))], final=False, seed=0, stats=stats)
    head = Head(data.dim, 8, 0.5, 2)
    assert layout.names == [name for name, _ in head.named_parameters()]
    for name, p in zip(layout.names, layout.params, strict=True):
        assert p.shape[1:] == dict(head.named_parameters())[name].shape
    state = layout.state_dict(layout.params, 0)
    head.load_state_dict(state)  # strict: every key Head has, nothing else
    for name, value in init_head(0, 0, data.dim, 8, 2).items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0)

    class Wider(Head):
        def __init__(self, in_features=2048, hidden=512, dropout=0.5, classes=2) -> None:
            super().__init__(in_features, hidden, dropout, classes)
            self.gate = torch.nn.Linear(hidden, 3)

    monkeypatch.setattr(fastall.head, "Head", Wider)
    assert list(head_parameters(data.dim, 8, 2)) == [*layout.names, "gate.weight", "gate.bias"]
    init = init_head(0, 0, data.dim, 8, 2)
    assert init["gate.weight"].shape == (3, 8) and init["gate.weight"].abs().max() <= 8**-0.5
