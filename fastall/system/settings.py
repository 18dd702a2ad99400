"""Settings as data, read from the fields of a dataclass (``HeadConfig``, ``ExtractConfig``, ...).

A field declared with :func:`hparam` carries its help text, its allowed values and (for a head) how a sweep
samples it. From that one declaration come a command's CLI options and their help, validation, and (for the
head) the sweep grid and the printed ``fastall train-head`` command: adding a setting is one edit.
Types: int, float, str, bool, each optionally ``| None``, and ``tuple[str, ...]``/``tuple[int, ...]`` (a
comma-separated list).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

_NONE_WORDS = ("none", "off", "-")
_TRUE, _FALSE = ("true", "on", "1", "yes"), ("false", "off", "0", "no")


def hparam(
    default: Any,
    help: str,
    *,
    check: Callable[[Any], bool] | None = None,
    rule: str = "",
    choices: Sequence[str] | None = None,
    log: bool = False,
) -> Any:
    """A dataclass field that is a hyperparameter: ``check(value)`` must hold (else the problem reads
    ``"<name> <value> <rule>"``), a string takes one of ``choices``; ``log``: a sweep samples its ranges
    log-uniformly."""
    meta = {"help": help, "check": check, "rule": rule, "choices": tuple(choices or ()), "log": log}
    return field(default=default, metadata={"hparam": meta})


def within(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False) -> dict:
    """``check`` and ``rule`` of a range, for :func:`hparam`: ``hparam(512, "...", **within(1, 4096))``.
    Whole-number bounds read ``1..4096``, others ``[0, 1)``; without ``high``, ``>= 0`` (or ``> 0``)."""

    def check(v: Any) -> bool:
        above = low < v if low_open else low <= v
        return above and (high is None or (v < high if high_open else v <= high))

    if high is None:
        rule = f"must be {'>' if low_open else '>='} {low:g}"
    elif type(low) is int and type(high) is int and not (low_open or high_open):
        rule = f"must be in {low}..{high}"
    else:
        rule = f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return {"check": check, "rule": rule}


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: name, base type (int, float, str or bool), whether None is allowed, default,
    help."""

    name: str
    kind: type
    optional: bool
    default: Any
    help: str
    choices: tuple[str, ...]
    log: bool
    check: Callable[[Any], bool] | None
    rule: str
    item: type = str

    @property
    def flag(self) -> str:
        """The CLI option: ``batch_size`` -> ``--batch-size``."""
        return "--" + self.name.replace("_", "-")

    @property
    def numeric(self) -> bool:
        return self.kind in (int, float)

    @property
    def expected(self) -> str:
        """What ``parse`` accepts, for error messages."""
        kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a word"}
        return kinds.get(self.kind, "a comma-separated list")

    def parse(self, text: str) -> Any:
        """A value from sweep-grid text (``none`` for an optional one); ValueError when it is not one."""
        word = text.strip().lower()
        if self.optional and word in _NONE_WORDS:
            return None
        if self.kind is bool:
            if word not in _TRUE + _FALSE:
                raise ValueError(text)
            return word in _TRUE
        if self.kind is str:
            return text.strip()
        if self.kind is tuple:
            return tuple(self.item(v.strip()) for v in text.split(",") if v.strip())
        number = float(text)
        if self.kind is int:
            if number != int(number):
                raise ValueError(text)
            return int(number)
        return number

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None."""
        if value is None and self.optional:
            return None
        if self.choices and value not in self.choices:
            return f"{self.name} {value!r}: expected {' or '.join(self.choices)}"
        if self.check is not None and not self.check(value):
            return f"{self.name} {value} {self.rule}"
        return None

    def flag_problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, in the words of its CLI option (``--views must be ..., got 0``)."""
        if value is None and self.optional:
            return None
        if self.choices and value not in self.choices:
            return f"{self.flag} must be {' or '.join(self.choices)}, got {value!r}"
        if self.check is not None and not self.check(value):
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            return f"{self.flag} {self.rule}, got {shown}"
        return None

    def argv(self, value: Any) -> list[str]:
        """The train-head arguments that set ``value`` (none for an optional value left unset)."""
        if self.kind is bool:
            return [self.flag if value else "--no-" + self.flag[2:]]
        if value is None:
            return []
        return [self.flag, repr(value) if self.kind is float else str(value)]


@functools.cache
def hparams_of(cls: type) -> tuple[HParam, ...]:
    """The :func:`hparam` fields of dataclass ``cls``, in declaration order, with their resolved types."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("hparam")
        if meta is None:
            continue
        kind, optional = _base_type(hints[f.name])
        item = typing.get_args(hints[f.name])[0] if kind is tuple else str
        out.append(HParam(f.name, kind, optional, f.default, **meta, item=item))
    return tuple(out)


def _base_type(hint: Any) -> tuple[type, bool]:
    """``int`` -> (int, False); ``int | None`` -> (int, True); ``tuple[int, ...]`` -> (tuple, False)."""
    if typing.get_origin(hint) is tuple:
        return tuple, False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported hyperparameter type {hint!r}")
        return args[0], True
    return hint, False
