"""The one training engine behind `train-head` and `sweep`: a stack of independent heads in lockstep.

A stack holds M heads of one shape (hidden size, batch size); head m is one (configuration, fold) pair.
Every random stream of a head depends only on (seed, fold, epoch): the permutation, the augmented view drawn
per image, the initialisation and the dropout masks (a counter-based hash, so one head alone and the same head
inside a stack of hundreds draw the same masks). Forward, backward and the optimiser are batched over heads
and written by hand: one bmm per layer and step, `torch._fused_adam_` per (lr, weight decay) group (exactly
torch.optim.Adam), ReduceLROnPlateau and early stopping per head. A head that has finished its epoch, stopped
early or run its epochs gets no update at all. Heads never interact, so a configuration trained in a sweep and
trained alone give the same result.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastall.errors import FastallError
from fastall.head import head_state_dict
from fastall.training.config import HeadConfig, HeadResult, StackData
from fastall.training.optim import adam_update, plateau_update, weight_grad
from fastall.training.streams import dropout_lanes, dropout_threshold, epoch_order, fold_statistics, init_head


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise FastallError(f"--device {device!r}: expected auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise FastallError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the device computes it natively (CUDA AMP, CPU avx512_bf16/AMX), else fp32."""
    if precision in ("fp32", "bf16"):
        return precision
    if precision != "auto":
        raise FastallError(f"precision {precision!r}: expected auto, bf16 or fp32")
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


# ---- the stack ---------------------------------------------------------------------------------------------


@dataclass
class _Head:
    config: int
    cfg: HeadConfig
    fold: int  # index into the stack's folds; the final head's fold is len(data.folds)
    final: bool
    lr: float
    alive: bool = True
    best_loss: float = math.inf
    best_epoch: int = 0
    epochs_run: int = 0
    plateau_best: float = math.inf
    plateau_bad: int = 0
    val_history: list[float] = field(default_factory=list)
    lr_history: list[float] = field(default_factory=list)
    snapshots: list[list[torch.Tensor]] = field(default_factory=list)


class Stack:
    """M heads of one shape: ``W1 [M, D, H]``, ``b1 [M, 1, H]``, ``W2 [M, K, H]``, ``b2 [M, 1, K]``."""

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
    ) -> None:
        self.data, self.seed, self.chunk = data, seed, chunk
        self.device = data.features.device
        self.cdt = torch.bfloat16 if precision == "bf16" else torch.float32
        self.hidden, self.batch = configs[0][1].shape
        n_folds = len(data.folds) + (1 if final else 0)
        self.rows = [tr for tr, _ in data.folds] + ([data.pool] if final else [])
        self.heads = [
            _Head(ci, cfg, f, f == len(data.folds), cfg.lr) for f in range(n_folds) for ci, cfg in configs
        ]
        m, d, h, k = len(self.heads), data.dim, self.hidden, data.classes
        inits = [init_head(seed, f, d, h, k) for f in range(n_folds)]
        of_fold = torch.tensor([hd.fold for hd in self.heads], device=self.device)
        self.params = [
            torch.stack([init[i] for init in inits]).to(self.device).index_select(0, of_fold)
            for i in range(4)
        ]
        self.params[1] = self.params[1].unsqueeze(1)
        self.params[3] = self.params[3].unsqueeze(1)
        self.grads = [torch.zeros_like(p) for p in self.params]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.best = [p.clone() for p in self.params] if any(hd.cfg.patience for hd in self.heads) else []
        self.steps = [[torch.zeros((), device=self.device) for _ in range(4)] for _ in range(m)]
        mean, std = stats
        std_on = torch.tensor([hd.cfg.standardize for hd in self.heads], device=self.device)[:, None]
        fold_idx = torch.tensor([hd.fold for hd in self.heads], device=self.device)
        self.mean = torch.where(std_on, mean[fold_idx], torch.zeros(1, device=self.device))
        self.std = torch.where(std_on, std[fold_idx], torch.ones(1, device=self.device))
        self.inv = (1.0 / self.std).unsqueeze(1)
        self.shift = (-self.mean).unsqueeze(1) * self.inv
        p = torch.tensor([hd.cfg.dropout for hd in self.heads], device=self.device)
        self.thr = torch.tensor(
            [dropout_threshold(hd.cfg.dropout) for hd in self.heads], device=self.device, dtype=torch.int16
        ).view(m, 1, 1)
        self.scale = (1.0 / (1.0 - p)).float().view(m, 1, 1)
        self.class_w = torch.stack([self._class_weights(hd) for hd in self.heads]).to(self.device)
        self.val_x = [self._gather(val, 0) for _, val in data.folds]
        self._local = threading.local()
        self._val_std: dict[tuple[int, bool], torch.Tensor] = {}
        self._val_lock = threading.Lock()
        self.pool = pool

    def _class_weights(self, hd: _Head) -> torch.Tensor:
        k = self.data.classes
        if hd.cfg.class_weight == "none":
            return torch.ones(k)
        counts = np.bincount(self.data.labels[self.rows[hd.fold]], minlength=k).astype(np.float64)
        weights = np.where(counts > 0, counts.sum() / (k * np.maximum(counts, 1)), 0.0)
        return torch.tensor(weights, dtype=torch.float32)

    def _gather(self, rows: np.ndarray, view: int) -> torch.Tensor:
        return self.data.features[torch.as_tensor(rows, device=self.device), view]

    def _head_view(self, i: int) -> list[list[torch.Tensor]]:
        return [[t[i] for t in group] for group in (self.params, self.grads, self.exp_avg, self.exp_avg_sq)]

    # -- training -------------------------------------------------------------------------------------------

    def train(self, progress: Callable[[int, int], None] | None = None) -> None:
        max_epochs = max(hd.cfg.epochs for hd in self.heads)
        for epoch in range(max_epochs):
            if not any(hd.alive for hd in self.heads):
                break
            self._train_epoch(epoch)
            self._end_epoch(epoch)
            if progress:
                progress(epoch + 1, max_epochs)
        self._restore()

    def _map(self, fn: Callable[[Any], Any], items: list) -> list:
        """``[fn(x) for x in items]``; on a CPU across worker threads with one intra-op thread each: heads
        never share an op, so no OpenMP barrier per op (which a busy shared machine turns into waits), and
        each head's arithmetic is the same whichever worker runs it."""
        if self.pool is None:
            return [fn(x) for x in items]
        return list(self.pool.map(fn, items))

    def _chunks(self, a: int, b: int, alive_only: bool = True) -> list[tuple[int, int]]:
        out = []
        for start in range(a, b, self.chunk):
            idx = [
                i for i in range(start, min(start + self.chunk, b)) if self.heads[i].alive or not alive_only
            ]
            if idx:
                out.append((idx[0], idx[-1] + 1))
        return out

    def _train_epoch(self, epoch: int) -> None:
        n_folds = len(self.rows)
        live_folds = sorted({hd.fold for hd in self.heads if hd.alive})
        order = {f: epoch_order(self.seed, f, epoch, self.rows[f], self.data.views) for f in live_folds}
        n_steps = {f: -(-len(self.rows[f]) // self.batch) for f in range(n_folds)}
        lanes = dict(
            zip(
                live_folds,
                self._map(
                    lambda f: dropout_lanes(
                        self.seed, f, epoch, n_steps[f], self.batch, self.hidden, self.device
                    ),
                    live_folds,
                ),
                strict=True,
            )
        )
        self._map(lambda c: self._train_chunk(*c, order, n_steps, lanes), self._chunks(0, len(self.heads)))

    def _scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A per-thread buffer reused across epochs (a fresh large CPU allocation faults in every page)."""
        size = math.prod(shape)
        buf = getattr(self._local, name, None)
        if buf is None or buf.numel() < size or buf.dtype != dtype:
            buf = torch.empty(size, dtype=dtype, device=self.device)
            setattr(self._local, name, buf)
        return buf[:size].view(shape)

    def _standardized(self, out: torch.Tensor, index: torch.Tensor, head: int, block: int = 1024) -> None:
        """``out [n, D] = (features[index] - mean) / std`` of ``head``, in row blocks through fp32 scratch."""
        flat = self.data.features.reshape(-1, self.data.dim)
        raw = self._scratch("raw", (block, self.data.dim), flat.dtype)
        tmp = self._scratch("tmp", (block, self.data.dim), torch.float32)
        for r0 in range(0, index.numel(), block):
            n = min(block, index.numel() - r0)
            torch.index_select(flat, 0, index[r0 : r0 + n], out=raw[:n])
            x = tmp[:n].copy_(raw[:n])
            out[r0 : r0 + n] = x.mul_(self.inv[head, 0]).add_(self.shift[head, 0])

    def _epoch_inputs(self, a: int, b: int, order: dict, n_steps: dict, lanes: dict) -> dict[str, Any]:
        """The chunk's whole epoch at once: standardised inputs ``[U, S, B, D]`` per (fold, standardize)
        variant, normalised row weights and weighted targets per head, dropout lanes per fold."""
        heads, dev, bsz, k = self.heads[a:b], self.device, self.batch, self.data.classes
        folds = sorted({hd.fold for hd in heads if hd.alive})
        first: dict[tuple[int, bool], int] = {}
        for i, hd in enumerate(heads, a):
            if hd.alive:
                first.setdefault((hd.fold, hd.cfg.standardize), i)
        variants = list(first.items())
        s_max = max(n_steps[f] for f in folds)
        xs = self._scratch("xs", (len(variants), s_max, bsz, self.data.dim), self.cdt)
        valid = torch.zeros((len(folds), s_max * bsz), dtype=torch.bool)
        y = torch.zeros((len(folds), s_max * bsz), dtype=torch.long)
        index = torch.zeros((len(folds), s_max * bsz), dtype=torch.long)
        for j, f in enumerate(folds):
            r, v = order[f]
            index[j, : len(r)] = torch.from_numpy(r * self.data.views + v)
            valid[j, : len(r)] = True
            y[j, : len(r)] = torch.from_numpy(self.data.labels[r])
        index = index.to(dev)
        for u, ((f, _), i) in enumerate(variants):
            self._standardized(xs[u].view(-1, self.data.dim), index[folds.index(f)], i)
        key = {(f, std): u for u, ((f, std), _) in enumerate(variants)}
        var = [key.get((hd.fold, hd.cfg.standardize), 0) for hd in heads]
        fpos = [folds.index(hd.fold) if hd.fold in folds else 0 for hd in heads]
        fpos_t = torch.tensor(fpos)
        y, valid = y[fpos_t].view(b - a, s_max, bsz), valid[fpos_t].view(b - a, s_max, bsz)
        w = self.class_w[a:b].cpu().gather(1, y.view(b - a, -1)).view(b - a, s_max, bsz) * valid
        w = (w / w.sum(2, keepdim=True).clamp_min(1e-12)).transpose(0, 1).contiguous()  # [S, Mc, B]
        target = torch.nn.functional.one_hot(y.transpose(0, 1), k).float() * w.unsqueeze(-1)
        if len(folds) == 1:
            lane_steps = lanes[folds[0]].unsqueeze(1)
        else:
            lane_steps = torch.zeros((s_max, len(folds), bsz, self.hidden), dtype=torch.int16, device=dev)
            for j, f in enumerate(folds):
                lane_steps[: n_steps[f], j] = lanes[f]
        same = list(range(b - a))
        return {
            "steps": s_max,
            "x": xs.transpose(0, 1),
            "lanes": lane_steps,
            "w": w.unsqueeze(-1).to(dev),
            "target": target.to(dev),
            "var": None if var == same else torch.tensor(var, device=dev),
            "fold": None if fpos == same else torch.tensor(fpos, device=dev),
        }

    def _train_chunk(self, a: int, b: int, order: dict, n_steps: dict, lanes: dict) -> None:
        """All steps of one epoch for heads a..b: hand-written forward/backward, then Adam per group."""
        inp = self._epoch_inputs(a, b, order, n_steps, lanes)
        plans = self._adam_plans(a, b, n_steps)
        W1, b1, W2, b2 = (p[a:b] for p in self.params)
        gW1, gb1, gW2, gb2 = (g[a:b] for g in self.grads)
        thr, scale, cdt = self.thr[a:b], self.scale[a:b], self.cdt
        xs, lane_steps, w, target, var, fold = (inp[n] for n in ("x", "lanes", "w", "target", "var", "fold"))
        premasked = fold is None and lane_steps.numel() * 4 <= 1 << 26
        if premasked:
            out = self._scratch("mask", tuple(lane_steps.shape), torch.float32)
            lane_steps = torch.mul(lane_steps >= thr, scale, out=out)
        w1c = self._scratch("w1c", tuple(W1.shape), cdt) if cdt != W1.dtype else W1
        g1c = self._scratch("g1c", tuple(W1.shape), cdt) if cdt != W1.dtype else None
        single = var is None and xs.shape[1] == 1
        for s in range(inp["steps"]):
            x = xs[s] if not single else xs[s, 0].unsqueeze(0)  # a contiguous x: no copy for x^T below
            keep = lane_steps[s]
            if var is not None:
                x = x.index_select(0, var)
            if fold is not None:
                keep = keep.index_select(0, fold)
            if g1c is not None:
                w1c.copy_(W1)
            z = torch.baddbmm(b1.to(cdt), x, w1c).float().relu_()
            mask = keep if premasked else torch.where(keep >= thr, scale, 0.0)
            act = z * mask
            mask = mask * torch.sign(z)  # d act / d z: the dropout scale where z > 0
            dl = torch.softmax(torch.baddbmm(b2, act, W2.transpose(1, 2)), -1).mul_(w[s]).sub_(target[s])
            torch.bmm(dl.transpose(1, 2), act, out=gW2)
            torch.sum(dl, 1, keepdim=True, out=gb2)
            dz = torch.bmm(dl, W2).mul_(mask)
            torch.sum(dz, 1, keepdim=True, out=gb1)
            weight_grad(x, dz, gW1, g1c)
            steps, groups = plans[s]
            torch._foreach_add_(steps, 1)
            for lr, wd, lists in groups:
                adam_update(*lists, lr=lr, weight_decay=wd)

    def _adam_plans(self, a: int, b: int, n_steps: dict) -> list[tuple[list, list]]:
        """Per step: the step counters to increment and the (lr, weight decay, tensor lists) groups of the
        heads that update at that step."""
        s_max = max(n_steps[self.heads[i].fold] for i in range(a, b) if self.heads[i].alive)
        plans: list = []
        cache: dict = {}
        for s in range(s_max):
            active = tuple(i for i in range(a, b) if self.heads[i].alive and s < n_steps[self.heads[i].fold])
            if active not in cache:
                groups: dict[tuple[float, float], list[list[torch.Tensor]]] = {}
                for i in active:
                    hd = self.heads[i]
                    lists = groups.setdefault((hd.lr, hd.cfg.weight_decay), [[], [], [], [], []])
                    for slot, tensors in zip(lists, [*self._head_view(i), self.steps[i]], strict=True):
                        slot.extend(tensors)
                steps = [t for i in active for t in self.steps[i]]
                cache[active] = (steps, [(lr, wd, lists) for (lr, wd), lists in groups.items()])
            plans.append(cache[active])
        return plans

    # -- validation, schedules, early stopping --------------------------------------------------------------

    @torch.no_grad()
    def predict(self, a: int, b: int, x: torch.Tensor, standardized: bool = False) -> torch.Tensor:
        """Softmax probabilities ``[b - a, N, K]`` of heads a..b on features ``x [N, D]`` (raw, or already
        standardised with these heads' statistics and in the compute dtype)."""
        W1, b1, W2, b2 = (p[a:b] for p in self.params)
        W1c, b1c = W1.to(self.cdt), b1.to(self.cdt)
        rows_per_chunk = max(16, min(1024, (1 << 25) // ((b - a) * x.shape[1])))
        out = []
        for start in range(0, x.shape[0], rows_per_chunk):
            xs = x[start : start + rows_per_chunk].unsqueeze(0)
            if not standardized:
                xs = torch.addcmul(self.shift[a:b], xs, self.inv[a:b]).to(self.cdt)
            z = torch.baddbmm(b1c, xs.expand(b - a, -1, -1), W1c).float().relu_()
            out.append(torch.softmax(torch.baddbmm(b2, z, W2.transpose(1, 2)), -1))
        return torch.cat(out, 1)

    def _val_inputs(self, f: int, a: int, b: int) -> torch.Tensor | None:
        """Fold f's validation features standardised for heads a..b (computed once per (fold, standardize)),
        or None when those heads differ in ``standardize``."""
        flags = {self.heads[i].cfg.standardize for i in range(a, b)}
        if len(flags) != 1:
            return None
        key = (f, flags.pop())
        with self._val_lock:
            if key not in self._val_std:
                rows = torch.as_tensor(self.data.folds[f][1] * self.data.views, device=self.device)
                out = torch.empty((rows.numel(), self.data.dim), dtype=self.cdt, device=self.device)
                self._standardized(out, rows, a)
                self._val_std[key] = out
            return self._val_std[key]

    def _fold_ranges(self) -> list[tuple[int, int, int]]:
        """(fold, a, b): the contiguous head range of each fold (heads are stored fold-major)."""
        out, a = [], 0
        for i in range(1, len(self.heads) + 1):
            if i == len(self.heads) or self.heads[i].fold != self.heads[a].fold:
                out.append((self.heads[a].fold, a, i))
                a = i
        return out

    def _val_losses(self) -> dict[int, float]:
        tasks = [
            (f, c0, c1)
            for f, a, b in self._fold_ranges()
            if f < len(self.data.folds)
            for c0, c1 in self._chunks(a, b)
        ]

        def run(task: tuple[int, int, int]) -> list[float]:
            f, c0, c1 = task
            x = self._val_inputs(f, c0, c1)
            prob = self.predict(c0, c1, self.val_x[f]) if x is None else self.predict(c0, c1, x, True)
            return self._loss(c0, c1, prob, self.data.folds[f][1]).tolist()

        losses = {}
        for (_, c0, c1), values in zip(tasks, self._map(run, tasks), strict=True):
            losses.update(zip(range(c0, c1), values, strict=True))
        return losses

    def _loss(self, a: int, b: int, prob: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """Class-weighted mean cross-entropy per head (torch CrossEntropyLoss semantics)."""
        y = torch.as_tensor(self.data.labels[rows], device=self.device)
        nll = -prob.clamp_min(1e-30).log().gather(2, y.view(1, -1, 1).expand(b - a, -1, 1)).squeeze(2)
        w = self.class_w[a:b][:, y]
        return (nll * w).sum(1) / w.sum(1).clamp_min(1e-12)

    def _end_epoch(self, epoch: int) -> None:
        losses = self._val_losses()
        for i, hd in enumerate(self.heads):
            if not hd.alive or hd.final:
                continue
            loss = losses[i]
            hd.epochs_run = epoch + 1
            hd.val_history.append(loss)
            hd.lr_history.append(hd.lr)
            if loss < hd.best_loss:
                hd.best_loss, hd.best_epoch = loss, epoch + 1
                if hd.cfg.patience is not None:
                    for p, q in zip(self.best, self.params, strict=True):
                        p[i].copy_(q[i])
            hd.lr, hd.plateau_best, hd.plateau_bad = plateau_update(
                loss, hd.lr, hd.plateau_best, hd.plateau_bad, hd.cfg.plateau_factor, hd.cfg.plateau_patience
            )
            stopped = hd.cfg.patience is not None and epoch + 1 - hd.best_epoch >= hd.cfg.patience
            hd.alive = not stopped and epoch + 1 < hd.cfg.epochs
        for i, hd in enumerate(self.heads):
            if hd.final and hd.alive:
                self._end_epoch_final(i, hd, epoch)

    def _fold_heads(self, config: int) -> list[_Head]:
        return [hd for hd in self.heads if hd.config == config and not hd.final]

    def final_epochs(self, config: int) -> int:
        """The median of the folds' best-epoch counts (rounded up): the final head's training length."""
        return int(math.ceil(np.median([self._kept_epoch(hd) for hd in self._fold_heads(config)])))

    @staticmethod
    def _kept_epoch(hd: _Head) -> int:
        return hd.best_epoch if hd.cfg.patience is not None else hd.epochs_run

    def _end_epoch_final(self, i: int, hd: _Head, epoch: int) -> None:
        hd.epochs_run = epoch + 1
        hd.lr_history.append(hd.lr)
        hd.snapshots.append([p[i].detach().clone() for p in self.params])
        folds = self._fold_heads(hd.config)
        hd.lr = float(np.median([f.lr for f in folds]))
        done = not any(f.alive for f in folds)
        hd.alive = epoch + 1 < hd.cfg.epochs and not (done and epoch + 1 >= self.final_epochs(hd.config))

    def _restore(self) -> None:
        for i, hd in enumerate(self.heads):
            if hd.final:
                hd.best_epoch = self.final_epochs(hd.config)
                for p, snap in zip(self.params, hd.snapshots[hd.best_epoch - 1], strict=True):
                    p[i].copy_(snap)
                hd.snapshots = []
            elif hd.cfg.patience is not None:
                for p, q in zip(self.params, self.best, strict=True):
                    p[i].copy_(q[i])
            else:
                hd.best_epoch = hd.epochs_run

    # -- results --------------------------------------------------------------------------------------------

    def results(self, tta: bool, states: bool = True) -> list[HeadResult]:
        """Every head's probabilities on its validation rows and the test rows (view 0, and the mean over all
        views with ``tta``), and (with ``states``) its Head state dict."""
        tasks = [(f, c0, c1) for f, a, b in self._fold_ranges() for c0, c1 in self._chunks(a, b, False)]
        return [r for part in self._map(lambda t: self._results(*t, tta, states), tasks) for r in part]

    def _results(self, f: int, a: int, b: int, tta: bool, states: bool) -> list[HeadResult]:
        probs: list[dict[str, np.ndarray]] = [{} for _ in range(a, b)]
        sets = {"test": self.data.test} if self.data.test.size else {}
        if f < len(self.data.folds):
            sets["val"] = self.data.folds[f][1]
        for name, rows in sets.items():
            x = self._val_inputs(f, a, b) if name == "val" else None
            p0 = self.predict(a, b, x, True) if x is not None else self.predict(a, b, self._gather(rows, 0))
            p0 = p0.cpu().numpy()
            for j in range(b - a):
                probs[j][name] = p0[j]
            if tta:
                ptta = sum(self.predict(a, b, self._gather(rows, v)) for v in range(self.data.views))
                for j in range(b - a):
                    probs[j][f"{name}_tta"] = (ptta[j] / self.data.views).cpu().numpy()
        out = []
        for j, i in enumerate(range(a, b)):
            hd = self.heads[i]
            kept = None if hd.final else hd.val_history[self._kept_epoch(hd) - 1]
            state = (
                head_state_dict(
                    *(p[i].detach().cpu() for p in self.params),
                    mean=self.mean[i].cpu(),
                    std=self.std[i].cpu(),
                )
                if states
                else {}
            )
            out.append(
                HeadResult(
                    hd.config,
                    hd.fold,
                    hd.final,
                    state,
                    hd.best_epoch,
                    hd.epochs_run,
                    kept,
                    hd.val_history,
                    hd.lr_history,
                    probs[j],
                )
            )
        return out


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
                )
                share = (start / len(group), len(part) / len(group))
                stack.train(_sub_progress(progress, g, len(shapes), *share))
                results.extend(stack.results(tta, states))
                del stack
    return sorted(results, key=lambda r: (r.config, r.fold))
