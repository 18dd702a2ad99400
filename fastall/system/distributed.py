"""torch.distributed under torchrun: which rank this is, each rank's share, and the process group.

The process group (gloo on the CPU; gloo for CPU tensors and nccl for CUDA tensors on a GPU) carries only
small control messages and, at the end, the finished arrays to rank 0. A heartbeat on its own gloo group
tells a slow rank from a dead one: a rank waits for the others for as long as they are alive, and stops with a
clear message when one of them fails, is killed, or stops answering for ``timeout`` seconds.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from fastall.errors import FastallError

DEFAULT_TIMEOUT = 300.0
BEAT_SECONDS = 0.5
CHUNK_BYTES = 1 << 28
_FINAL = 1 << 30
_LAUNCH = "launch with `torchrun --nproc_per_node N -m fastall ...`"


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job."""

    rank: int
    world: int
    local_rank: int
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def workers(self, per_machine: int) -> int:
        """This rank's part of ``per_machine`` decoding processes (the ranks of a machine share its cores)."""
        return max(1, per_machine // self.local_world) if per_machine else 0


def detect(flag: bool | None = None) -> DistEnv | None:
    """The torchrun job this process belongs to, or None for a plain run.

    ``flag`` None: distributed when torchrun started more than one process; True: require torchrun's
    environment (even for one process); False: ignore it.
    """
    if flag is False:
        return None
    names = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        if flag:
            unset = ", ".join(missing)
            raise FastallError(f"--distributed: no torchrun environment ({unset} unset); {_LAUNCH}")
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    except ValueError:
        raise FastallError(
            f"bad torchrun environment: RANK={os.environ['RANK']!r} WORLD_SIZE={os.environ['WORLD_SIZE']!r}"
        ) from None
    if not 0 <= rank < world:
        raise FastallError(f"bad torchrun environment: RANK={rank} is not in 0..WORLD_SIZE-1={world - 1}")
    if world == 1 and not flag:
        return None
    return DistEnv(rank, world, local_rank, max(1, local_world))


def share(n: int, rank: int, world: int) -> range:
    """Every ``world``-th of ``n`` items from ``rank``. No padding: each item is in exactly one share."""
    return range(rank, n, world)


def rank_device(device: str, env: DistEnv) -> str:
    """``cuda`` (or ``auto`` on a GPU machine) becomes this rank's own GPU, ``cuda:LOCAL_RANK``."""
    if device in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{env.local_rank}"
    return "cpu" if device == "auto" else device


def _short(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # gloo's [file.cc:line] prefix
    return text.split(". ", 1)[0]


class Group:
    """The process group of one torchrun job, with the heartbeat; use as a context manager on every rank.

    Every rank calls :meth:`wait` and the collectives in the same order. Leaving the context waits for every
    rank to leave it (or to fail), then destroys the group.
    """

    def __init__(self, env: DistEnv, device: str | torch.device = "cpu", timeout: float = DEFAULT_TIMEOUT):
        if not timeout > 0:
            raise FastallError(f"--dist-timeout must be positive, got {timeout:g}")
        self.env, self.timeout = env, float(timeout)
        self.cuda = torch.device(device).type == "cuda"
        self.problem: str | None = None
        self._phase, self._failed, self._seen_min = 0, 0, 0
        self._cond = threading.Condition()
        self._quiet = True  # no interrupt while the main thread waits or is inside a collective
        self._thread: threading.Thread | None = None
        self._old_term: Any = None

    def __enter__(self) -> Group:
        if self.cuda:
            torch.cuda.set_device(torch.device(f"cuda:{self.env.local_rank}"))
        span = timedelta(seconds=self.timeout)
        try:
            dist.init_process_group(
                "cpu:gloo,cuda:nccl" if self.cuda else "gloo",
                rank=self.env.rank,
                world_size=self.env.world,
                timeout=span,
            )
            self._beat = dist.new_group(backend="gloo", timeout=span)
        except (RuntimeError, ValueError) as err:
            where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
            raise FastallError(
                f"rank {self.env.rank}: could not join the {self.env.world} processes at {where} within "
                f"{self.timeout:g} s ({_short(err)})"
            ) from err
        self._thread = threading.Thread(target=self._heartbeat, name="fastall-heartbeat", daemon=True)
        self._thread.start()
        self._quiet = False
        if threading.current_thread() is threading.main_thread():
            self._old_term = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, kind: Any, err: BaseException | None, tb: Any) -> None:
        with self._cond:
            self._quiet = True
            self._failed = int(err is not None)
            self._phase = _FINAL
        try:
            self._thread.join(self.timeout + 10)
        except KeyboardInterrupt:
            err = err or KeyboardInterrupt()
            if self.problem is None:
                raise
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
        with contextlib.suppress(RuntimeError, ValueError):
            dist.destroy_process_group()
        if isinstance(err, KeyboardInterrupt) and self.problem:
            raise FastallError(self.problem) from None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        raise FastallError(
            f"rank {self.env.rank}: stopped by SIGTERM (torchrun stops every rank when one fails; its report "
            "names it); finished work is kept: rerun the same command to resume"
        )

    def _heartbeat(self) -> None:
        world = self.env.world
        try:
            while True:
                with self._cond:
                    mine = torch.tensor([self._phase, self._failed], dtype=torch.int64)
                seen = [torch.zeros_like(mine) for _ in range(world)]
                dist.all_gather(seen, mine, group=self._beat)
                phases, failed = [int(s[0]) for s in seen], [r for r, s in enumerate(seen) if int(s[1])]
                with self._cond:
                    self._seen_min = min(phases)
                    others = [r for r in failed if r != self.env.rank]
                    if others:
                        self.problem = (
                            f"rank {self.env.rank}: stopping because rank {others[0]} failed (its error is "
                            "above); finished work is kept: rerun the same command to resume"
                        )
                    self._cond.notify_all()
                if failed or min(phases) >= _FINAL:
                    break
                time.sleep(BEAT_SECONDS)
        except (RuntimeError, ValueError) as err:
            with self._cond:
                self.problem = (
                    f"rank {self.env.rank}: lost contact with the other ranks ({_short(err)}): one was "
                    f"killed, crashed, or did not answer for --dist-timeout {self.timeout:g} s; finished "
                    "work is kept: rerun the same command to resume"
                )
                self._cond.notify_all()
        with self._cond:
            if self.problem is not None and not self._quiet:
                _thread.interrupt_main()

    def wait(self) -> None:
        """Block until every rank reaches its matching ``wait`` call, however long they take while alive."""
        with self._cond:
            self._phase += 1
            self._quiet = True
            try:
                while self._seen_min < self._phase and self.problem is None:
                    if not self._thread.is_alive():
                        self.problem = self.problem or f"rank {self.env.rank}: heartbeat stopped"
                        break
                    self._cond.wait(1.0)
            finally:
                self._quiet = False
            if self.problem is not None:
                raise FastallError(self.problem)

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (small, picklable), in rank order."""
        out: list[Any] = [None] * self.env.world
        self._collective(dist.all_gather_object, out, obj)
        return out

    def gather_arrays(self, arrays: list[np.ndarray]) -> list[list[np.ndarray]] | None:
        """Rank 0 gets every rank's ``arrays`` (as raw bytes over the group, in chunks); other ranks None."""
        specs = self.all_gather([(a.shape, a.dtype.str) for a in arrays])
        if not self.env.is_main:
            for a in arrays:
                for piece in _chunks(np.ascontiguousarray(a)):
                    self._collective(dist.send, piece, 0)
            return None
        out = [list(arrays)] + [[np.empty(s, d) for s, d in spec] for spec in specs[1:]]
        works = [
            (src, self._collective(dist.irecv, piece, src))
            for src in range(1, self.env.world)
            for a in out[src]
            for piece in _chunks(a)
        ]
        for _, work in works:
            self._collective(work.wait)
        return out

    def _collective(self, op: Any, *args: Any) -> Any:
        with self._cond:
            self._quiet = True
        try:
            return op(*args)
        except (RuntimeError, ValueError) as err:
            raise FastallError(
                self.problem
                or f"rank {self.env.rank}: lost contact with the other ranks ({_short(err)}); finished work "
                "is kept: rerun the same command to resume"
            ) from err
        finally:
            with self._cond:
                self._quiet = False


def _chunks(a: np.ndarray) -> list[torch.Tensor]:
    """Byte views of ``a`` (shared memory), at most CHUNK_BYTES each; empty arrays send nothing."""
    flat = torch.from_numpy(a.reshape(-1).view(np.uint8)) if a.size else torch.empty(0, dtype=torch.uint8)
    return [flat[i : i + CHUNK_BYTES] for i in range(0, flat.numel(), CHUNK_BYTES)]
