"""The sweep grid: ``name=v1,v2 name=v3 ...`` (the full product) or, with ``--random N``, N samples where
``name=low:high`` is a range and a list is a choice.

Names, types and allowed values come from :class:`~fastall.training.config.HeadConfig`'s fields (dashes or
underscores); a range samples log-uniformly for a field declared ``log`` (lr, weight_decay), uniformly
otherwise, integers for an integer field. A malformed token stops with a one-line message naming it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fastall.errors import FastallError
from fastall.system.machine import available_memory
from fastall.system.settings import HParam
from fastall.training.config import HeadConfig


@dataclass(frozen=True)
class Range:
    low: float
    high: float


def grid_names() -> dict[str, HParam]:
    return {p.name: p for p in HeadConfig.hparams()}


def _value(spec: HParam, text: str, token: str, flag: str) -> Any:
    try:
        value = spec.parse(text)
    except ValueError:
        raise FastallError(f"bad {flag} token {token!r}: {text!r} is not {spec.expected}") from None
    problem = spec.problem(value)
    if problem:
        raise FastallError(f"bad {flag} token {token!r}: {problem}")
    return value


def parse_grid(
    text: str, *, allow_ranges: bool = False, flag: str = "--grid", names: dict[str, HParam] | None = None
) -> dict[str, list | Range]:
    """``"lr=1e-4,3e-4 hidden=256:1024"`` -> ``{"lr": [1e-4, 3e-4], "hidden": Range(256, 1024)}``; errors name
    the option ``flag``. ``names``: another configuration's hyperparameters (default: HeadConfig's)."""
    known = names if names is not None else grid_names()
    grid: dict[str, list | Range] = {}
    for token in text.split():
        name, sep, values = token.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise FastallError(f"bad {flag} token {token!r}: expected name=value[,value...] or name=low:high")
        if name not in known:
            raise FastallError(
                f"bad {flag} token {token!r}: unknown parameter {name!r} (known: {', '.join(known)})"
            )
        if name in grid:
            raise FastallError(f"bad {flag} token {token!r}: {name} is given twice")
        spec = known[name]
        if ":" in values:
            if not allow_ranges:
                raise FastallError(f"bad {flag} token {token!r}: a range needs --random N (sweep)")
            if not spec.numeric:
                raise FastallError(f"bad {flag} token {token!r}: {name} takes a list of values, not a range")
            low, _, high = values.partition(":")
            lo, hi = _value(spec, low, token, flag), _value(spec, high, token, flag)
            if lo is None or hi is None:
                raise FastallError(f"bad {flag} token {token!r}: a range needs two numbers")
            if lo > hi:
                raise FastallError(f"bad {flag} token {token!r}: the range needs low <= high")
            grid[name] = Range(lo, hi)
            continue
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not items:
            raise FastallError(f"bad {flag} token {token!r}: no values")
        grid[name] = list(dict.fromkeys(_value(spec, v, token, flag) for v in items))
    if not grid:
        raise FastallError(f"{flag} is empty: give name=value[,value...] tokens")
    return grid


RESULT_OVERHEAD = 16 << 10  # bytes kept per configuration besides its predictions (history, table row, JSON)


def count_configs(grid: dict[str, list | Range], random: int | None = None) -> int:
    """How many configurations ``grid`` (or ``random`` draws from it) gives, without making them."""
    return int(random) if random else math.prod(len(v) for v in grid.values() if isinstance(v, list))


def check_budget(n: int, folds: int, images: int, classes: int, flag: str) -> str:
    """One line estimating what ``n`` configurations keep in memory (every fold's out-of-fold
    probabilities, history and results row); FastallError, with the estimate, where it cannot fit in half
    of the memory available now. Training itself runs in stacks sized to memory by the engine."""
    per = images * classes * 8 + folds * RESULT_OVERHEAD
    need, free = n * per, available_memory()
    on = f", {images:,} images" if images else ""
    line = f"{n:,} configuration(s) x {folds} fold(s){on}: about {need / 2**30:.2f} GiB kept"
    if free is not None and need > free / 2:
        raise FastallError(
            f"{flag}: {line}, over half of the {free / 2**30:.1f} GiB available: use at most about "
            f"{max(1, int(free / 2 / per)):,} configurations"
        )
    return line


def expand(grid: dict[str, list | Range], base: HeadConfig | None = None) -> list[HeadConfig]:
    """Every combination of the grid's lists on top of ``base`` (the paper's head), in order (the last name
    varies fastest)."""
    names = list(grid)
    return [
        replace(base or HeadConfig(), **dict(zip(names, combo, strict=True)))
        for combo in itertools.product(*(grid[n] for n in names))
    ]


def sample(
    grid: dict[str, list | Range], n: int, seed: int, base: HeadConfig | None = None
) -> list[HeadConfig]:
    """N configurations on top of ``base`` (the paper's head): log-uniform for ranges of ``log`` fields
    above 0, else uniform; lists are choices."""
    if n < 1:
        raise FastallError(f"--random {n}: expected at least 1 configuration")
    known = grid_names()
    rng = np.random.default_rng([seed, 0x5EE9])
    out = []
    for _ in range(n):
        values = {}
        for name, spec in grid.items():
            if isinstance(spec, list):
                values[name] = spec[int(rng.integers(len(spec)))]
            elif known[name].kind is int:
                values[name] = int(rng.integers(int(spec.low), int(spec.high) + 1))
            elif known[name].log and spec.low > 0:
                values[name] = float(math.exp(rng.uniform(math.log(spec.low), math.log(spec.high))))
            else:
                values[name] = float(rng.uniform(spec.low, spec.high))
        out.append(replace(base or HeadConfig(), **values))
    return out


def grid_help() -> str:
    """The names a grid takes, with their types and defaults (for ``--grid``'s help)."""
    parts = []
    for p in HeadConfig.hparams():
        kind = " or ".join(p.choices) if p.choices else p.kind.__name__ + (" or none" if p.optional else "")
        parts.append(f"{p.name} ({kind}; {p.default})")
    return ", ".join(parts)
