"""The one rule for every ``--seed`` (extract, train-head, sweep, compare, synth, demo): 0..2**63-1, what
numpy's and torch's generators all accept."""

from __future__ import annotations

from fastall.errors import FastallError

MAX_SEED = 2**63 - 1


def check_seed(seed: object, flag: str = "--seed") -> int:
    """``seed`` as an int in 0..2**63-1; FastallError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise FastallError(f"{flag} must be in 0..2**63-1, got {seed}")
    return seed
