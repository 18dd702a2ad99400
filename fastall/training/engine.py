"""The one training engine behind `train-head` and `sweep`: a stack of independent heads in lockstep.

A stack holds M heads of one shape; head m is one (configuration, fold) pair. Every random stream of a head
depends only on (seed, fold, epoch) (``streams``), so one head alone and the same head inside a stack of
hundreds train identically. Per epoch: the inputs of every step (``batch.epoch_batch``), then per step the
hand-written forward/backward of all heads at once (``stacked.forward_backward``) and one Adam update of the
heads that step (``optim.StackedAdam``); then validation, ReduceLROnPlateau and early stopping per head
(``validation``); at the end the final head's length is chosen and every head packaged (``results``). A head
that has finished its epoch, stopped early or run its epochs gets no update at all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch

from fastall.training.batch import EpochBatch, Scratch, epoch_batch
from fastall.training.config import HeadConfig, HeadResult, StackData
from fastall.training.func_engine import FuncStep
from fastall.training.layout import StackLayout
from fastall.training.optim import StackedAdam
from fastall.training.results import end_final_epoch, package, restore_kept
from fastall.training.stacked import forward_backward, train_loss
from fastall.training.streams import dropout_lanes, epoch_order, fold_statistics
from fastall.training.validation import Validator, end_fold_epoch

ENGINES = ("stacked", "vmap")
DEFAULT_ENGINE = "stacked"
"""``stacked``: the hand-written step (``stacked.forward_backward`` + ``optim.StackedAdam``); ``vmap``:
``torch.func`` over the one ``Head`` with autograd and ``torch.optim.Adam`` (``func_engine``)."""


class Stack:
    """M heads of one shape trained in lockstep (tensor layout: ``layout.StackLayout``)."""

    def __init__(
        self,
        data: StackData,
        configs: list[tuple[int, HeadConfig]],
        *,
        final: bool,
        seed: int,
        precision: str,
        stats: tuple[torch.Tensor, torch.Tensor],
        chunk: int,
        pool: ThreadPoolExecutor | None = None,
        fused: bool | None = None,
        engine: str | None = None,
    ) -> None:
        self.data, self.seed, self.chunk, self.pool = data, seed, chunk, pool
        self.device = data.features.device
        self.cdt = torch.bfloat16 if precision == "bf16" else torch.float32
        self.layout = StackLayout(data, configs, final=final, seed=seed, stats=stats)
        self.heads = self.layout.heads
        self.adam = StackedAdam(self.layout.params, fused)
        self.params = self.adam.params
        engine = engine or DEFAULT_ENGINE
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r}: use one of {ENGINES}")
        self.func = (
            FuncStep(self.layout.names, self.params, self.heads, self.cdt) if engine == "vmap" else None
        )
        self.best = [p.clone() for p in self.params] if any(hd.cfg.patience for hd in self.heads) else []
        self.scratch = Scratch(self.device)
        self.val = Validator(self.layout, self.scratch, self.cdt)
        self.train_loss = torch.zeros(len(self.heads), device=self.device)  # summed over the epoch's steps

    def _map(self, fn: Callable[[Any], Any], items: list) -> list:
        """``[fn(x) for x in items]``; on a CPU across worker threads (see :func:`cpu_workers`)."""
        if self.pool is None:
            return [fn(x) for x in items]
        return list(self.pool.map(fn, items))

    def train(self, progress: Callable[[int, int], None] | None = None) -> None:
        if self.data.linear_inits is not None:
            self._validate_start()
        max_epochs = max(hd.limit for hd in self.heads)
        for epoch in range(max_epochs):
            if not any(hd.alive for hd in self.heads):
                break
            self._train_epoch(epoch)
            self._end_epoch(epoch)
            if progress:
                progress(epoch + 1, max_epochs)
        restore_kept(self.layout, self.params, self.best)

    def _validate_start(self) -> None:
        """Heads that start from a linear model: their starting point is epoch 0, the one to beat (kept when
        no epoch has a lower validation loss; its parameters are already in ``best``)."""
        scores = self.val.scores(self.params, self.chunk, self._map)
        for i, hd in enumerate(self.heads):
            if i in scores and hd.plan is None:
                hd.initial_loss = hd.best_loss = scores[i][0]

    def _train_epoch(self, epoch: int) -> None:
        layout, seed = self.layout, self.seed
        live_folds = sorted({hd.fold for hd in self.heads if hd.alive})
        views, first = self.data.views, self.data.first_view
        order = {f: epoch_order(seed, f, epoch, layout.rows[f], views, first) for f in live_folds}
        n_steps = layout.steps_per_fold()
        lanes = self._map(
            lambda f: dropout_lanes(seed, f, epoch, n_steps[f], layout.batch, layout.hidden, self.device),
            live_folds,
        )
        lanes_of = dict(zip(live_folds, lanes, strict=True))
        self._map(
            lambda c: self._train_chunk(
                *c, epoch_batch(layout, self.scratch, *c, order, n_steps, lanes_of, self.cdt)
            ),
            layout.chunks(0, len(self.heads), self.chunk),
        )

    def _train_chunk(self, a: int, b: int, batch: EpochBatch) -> None:
        """All steps of one epoch for heads a..b: forward/backward, then one Adam update per step."""
        heads, n_steps = self.heads[a:b], self.layout.steps_per_fold()
        steps = torch.tensor([n_steps[hd.fold] if hd.alive else 0 for hd in heads])
        active = torch.arange(batch.steps)[:, None] < steps[None, :]
        lr = torch.tensor([hd.lr for hd in heads], dtype=torch.float64)
        decay = torch.tensor([hd.cfg.weight_decay for hd in heads], dtype=torch.float64)
        updates = self.adam.plan(a, lr, decay, active) if self.func is None else []
        if self.func is not None:
            self.func.set_rates(heads, a)
        params = [p[a:b] for p in self.params]
        grads = [g[a:b] for g in self.adam.grads]
        thr, scale, cdt = self.layout.thr[a:b], self.layout.scale[a:b], self.cdt
        lanes, variant, fold = batch.lanes, batch.variant, batch.fold
        premasked = fold is None and lanes.numel() * 4 <= 1 << 26
        if premasked:
            out = self.scratch.get("mask", tuple(lanes.shape), torch.float32)
            lanes = torch.mul(lanes >= thr, scale, out=out)
        cast = cdt != params[0].dtype
        w1c = self.scratch.get("w1c", tuple(params[0].shape), cdt) if cast else None
        g1c = self.scratch.get("g1c", tuple(params[0].shape), cdt) if cast else None
        xs, w, target, probs = batch.x, batch.w, batch.target, []
        single = variant is None and xs.shape[1] == 1
        for s in range(batch.steps):
            x = xs[s] if not single else xs[s, 0].unsqueeze(0)  # contiguous: no copy for x^T
            keep = lanes[s]
            if variant is not None:
                x = x.index_select(0, variant)
            if fold is not None:
                keep = keep.index_select(0, fold)
            mask = keep if premasked else torch.where(keep >= thr, scale, 0.0)
            if self.func is not None:
                probs.append(self.func.step(a, b, x, mask, target[s], active[s].tolist()))
                continue
            probs.append(forward_backward(params, grads, x, mask, w[s], target[s], w1c=w1c, g1c=g1c))
            self.adam.step(updates[s])
        self.train_loss[a:b] = train_loss(probs, target) if self.func is None else torch.stack(probs).sum(0)

    def _end_epoch(self, epoch: int) -> None:
        scores = self.val.scores(self.params, self.chunk, self._map)
        train_loss = self.train_loss.tolist()
        n_steps = self.layout.steps_per_fold()
        for i, hd in enumerate(self.heads):
            if not hd.alive:
                continue
            hd.history["train_loss"].append(train_loss[i] / n_steps[hd.fold])
            if hd.final:
                continue
            if end_fold_epoch(hd, epoch, *scores[i]) and hd.cfg.patience is not None:
                for p, q in zip(self.best, self.params, strict=True):
                    p[i].copy_(q[i])
        for i, hd in enumerate(self.heads):
            if hd.final and hd.alive:
                end_final_epoch(self.layout, self.params, i, epoch)

    def results(self, tta: bool, states: bool = True) -> list[HeadResult]:
        """Every head's probabilities on its validation rows and the test rows (view 0, and the mean over all
        views with ``tta``), its history and (with ``states``) its Head state dict."""
        return package(
            self.layout, self.params, self.val, self.chunk, tta=tta, states=states, map_fn=self._map
        )


def _sub_progress(
    progress: Callable | None, group: int, groups: int, done: float, weight: float
) -> Callable[[int, int], None] | None:
    """Report a stack's epochs as the fraction of its shape group done: ``progress(group, groups, f, 1)``."""
    if progress is None:
        return None
    return lambda epoch, epochs: progress(group, groups, done + weight * epoch / epochs, 1)


def max_configs_per_stack(device: torch.device, folds: int, dim: int, hidden: int) -> int:
    """Configurations per stack so that parameters, gradients and Adam state stay within a memory budget
    (2 GB on a CPU, half the free memory on CUDA); heads are independent, so splitting changes nothing."""
    budget = torch.cuda.mem_get_info(device)[0] * 0.5 if device.type == "cuda" else 2e9
    per_config = folds * dim * hidden * 4 * 6
    return max(1, int(budget // per_config))


def time_floor(configs: Sequence[HeadConfig], folds: int, images: int, dim: int, device: torch.device) -> str:
    """A lower bound on the training time of ``configs``: their multiply-adds (forward and backward, every
    fold, every epoch) at a matrix-multiply rate measured now on ``device`` (Adam, small batches and the
    rest only add to it)."""
    x = torch.randn(256, dim, device=device)
    w = torch.randn(dim, 512, device=device)
    (x @ w).sum().item()
    start = time.perf_counter()
    for _ in range(4):
        (x @ w).sum().item()
    rate = 4 * 2 * 256 * dim * 512 / max(time.perf_counter() - start, 1e-9)
    per_image = sum(c.epochs * 6 * dim * c.hidden for c in configs)
    seconds = per_image * images * (folds - 1) / rate  # each image trains folds - 1 of the fold heads
    took = f"{seconds:,.1f} s" if seconds < 120 else f"{seconds / 60:,.0f} min"
    return f"at least {took} of training (its multiply-adds at {rate / 1e9:,.0f} GFLOP/s, measured now)"


def default_chunk(device: torch.device, heads: int, dim: int, hidden: int) -> int:
    """Heads trained together per step: all on CUDA (memory permitting); on a CPU one head at a time keeps its
    parameters and Adam state in the last-level cache."""
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    per_head = dim * hidden * 4 * 8
    return max(1, min(heads, int(free * 0.5 // per_head)))


@contextmanager
def cpu_workers(device: torch.device) -> Iterator[ThreadPoolExecutor | None]:
    """On a CPU, one worker thread per intra-op thread, each (and the caller) with one intra-op thread: heads
    never share an op, so no op waits at an OpenMP barrier (which a busy shared machine turns into scheduler
    waits), and a head's arithmetic is the same whichever worker runs it. ``FASTALL_CPU_PARALLEL=ops`` trains
    one head at a time on all intra-op threads instead (faster on an idle machine, where it keeps the head's
    state in the last-level cache)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or os.environ.get("FASTALL_CPU_PARALLEL", "heads") == "ops":
        yield None
        return
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


def train_stacks(
    data: StackData,
    configs: Sequence[HeadConfig],
    *,
    seed: int = 0,
    precision: str = "fp32",
    final: bool = False,
    tta: bool = False,
    states: bool = True,
    chunk: int | None = None,
    progress: Callable[[int, int, float, float], None] | None = None,
    engine: str | None = None,
) -> list[HeadResult]:
    """Train every configuration on every fold (and a final head on the whole pool when ``final``); with
    ``states``, return each head's state dict too.

    Configurations of one shape (hidden, batch size) form one stack (split if memory demands); stacks run
    one after the other. ``progress(group, groups, done, total)`` is called after each epoch.
    """
    configs = [c.check() for c in configs]
    row_sets = [tr for tr, _ in data.folds] + ([data.pool] if final else [])
    shapes: dict[tuple[int, int], list[tuple[int, HeadConfig]]] = {}
    for i, cfg in enumerate(configs):
        shapes.setdefault(cfg.shape, []).append((i, cfg))
    results: list[HeadResult] = []
    with cpu_workers(data.features.device) as pool:
        stats = fold_statistics(data.features, row_sets, data.train_views(), pool.map if pool else map)
        for g, group in enumerate(shapes.values()):
            dev, hidden = data.features.device, group[0][1].hidden
            per_stack = max_configs_per_stack(dev, len(row_sets), data.dim, hidden)
            for start in range(0, len(group), per_stack):
                part = group[start : start + per_stack]
                heads = len(part) * len(row_sets)
                size = chunk or default_chunk(dev, heads, data.dim, hidden)
                stack = Stack(
                    data,
                    part,
                    final=final,
                    seed=seed,
                    precision=precision,
                    stats=stats,
                    chunk=size,
                    pool=pool,
                    engine=engine,
                )
                share = (start / len(group), len(part) / len(group))
                stack.train(_sub_progress(progress, g, len(shapes), *share))
                results.extend(stack.results(tta, states))
                del stack
    return sorted(results, key=lambda r: (r.config, r.fold))
