"""Click options generated from a declared config (``ExtractConfig``, ``BenchConfig``, ``SynthConfig``):
one ``--name`` per :func:`~fastall.system.settings.hparam` field, with its type, choices, default and help."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import click

from fastall.system.settings import HParam, hparams_of


def apply(*decorators: Callable) -> Callable:
    """Apply click decorators so that the options list in the order given."""

    def wrap(fn: Callable) -> Callable:
        for deco in reversed(decorators):
            fn = deco(fn)
        return fn

    return wrap


def _splitter(p: HParam) -> Callable:
    def split(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[Any, ...]:
        if value is None or isinstance(value, tuple):
            return value or ()
        try:
            return p.parse(value)
        except ValueError:
            kind = "integers" if p.item is int else "values"
            raise click.BadParameter(f"must be comma-separated {kind}, got {value!r}") from None

    return split


def setting_option(p: HParam) -> Callable:
    """The option of one declared setting: a flag for a bool (``--x/--no-x`` when it may be on by default or
    unset), a comma-separated list for a tuple, a choice where the field names its values."""
    if p.kind is bool and p.default is False and not p.optional:
        return click.option(p.flag, is_flag=True, help=p.help)
    if p.kind is bool:
        show = p.default is not None
        return click.option(f"{p.flag}/--no-{p.flag[2:]}", default=p.default, show_default=show, help=p.help)
    if p.kind is tuple:
        return click.option(p.flag, default=None, callback=_splitter(p), help=p.help)
    kind = click.Choice(list(p.choices)) if p.choices else p.kind
    show = p.default is not None
    return click.option(p.flag, type=kind, default=p.default, show_default=show, help=p.help)


def config_options(config: type, shared: Mapping[str, Callable] | None = None) -> list[Callable]:
    """One click option per setting of dataclass ``config``, in declaration order; ``shared`` names the
    settings that use an option declared once for several commands (``--device``, ``--positive``)."""
    shared = shared or {}
    return [shared.get(p.name) or setting_option(p) for p in hparams_of(config)]


def settings_of(config: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the settings of ``config`` out of a command's keyword arguments."""
    return {p.name: kwargs.pop(p.name) for p in hparams_of(config) if p.name in kwargs}
