"""Named training protocols: a head configuration plus how it is trained (views, selection, start).

``paper``: the paper's protocol exactly (Adam 1e-4, batch 32, 5 epochs, dropout 0.5, ReduceLROnPlateau on the
fold's validation loss, training on the augmented views only). Its plateau schedule reads the fold it reports,
so its CV figures are labelled optimistic.

``default``: fastall's protocol, chosen by measurement (docs/training.md, benchmarks/head_vs_probe.py): the
paper's head (2048-512-ReLU-Dropout 0.5-K), started as the linear probe fitted on its own training rows
(``head_init``), trained on all views (view 0 included) at Adam 3e-4 with L2 1e-4, for up to 30 epochs and
at least 600 optimiser steps (epochs grow on small data), with early stopping (patience 10; an epoch counts
as better only with a 3 % lower loss; the starting probe is epoch 0) and the plateau schedule (patience 3)
on an inner split of each fold's training patients, then refitted on all the fold's training rows with the
schedule chosen there (``selection``); finally, per fold, it keeps the probe itself or that MLP, whichever
an inner patient-grouped K-fold CV of the fold's training patients scores higher (``choose``,
:mod:`fastall.training.choice`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from fastall.errors import FastallError
from fastall.training.config import HeadConfig, TrainOptions


@dataclass(frozen=True)
class Preset:
    name: str
    config: HeadConfig
    train_views: str
    selection: str
    summary: str
    inner_folds: int = 1
    head_init: str = "random"
    choose: bool = False

    @property
    def optimistic(self) -> bool:
        return self.selection == "fold"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "paper", HeadConfig(), "augmented", "fold", "the paper's protocol (selects on the reported fold)"
        ),
        Preset(
            "default",
            HeadConfig(
                lr=3e-4,
                weight_decay=1e-4,
                epochs=30,
                min_steps=600,
                patience=10,
                min_delta=0.03,
                plateau_patience=3,
            ),
            "all",
            "inner",
            "fastall's protocol (starts from the linear probe, selects on an inner split of the training "
            "patients)",
            inner_folds=1,
            head_init="probe",
            choose=True,
        ),
    )
}
DEFAULT_PRESET = "default"


def preset(name: str) -> Preset:
    """The preset called ``name``; FastallError naming the valid ones otherwise."""
    if name not in PRESETS:
        raise FastallError(f"unknown preset {name!r}: use {' or '.join(PRESETS)}")
    return PRESETS[name]


def apply_preset(
    name: str, config: dict[str, Any], options: dict[str, Any]
) -> tuple[HeadConfig, dict[str, Any]]:
    """The preset's configuration and protocol, with ``config`` (HeadConfig fields) and ``options``
    (``train_views``, ``selection``) given explicitly on top."""
    p = preset(name)
    names = {f.name for f in fields(HeadConfig)}
    unknown = set(config) - names
    if unknown:
        raise TypeError(f"unexpected HeadConfig field {sorted(unknown)[0]!r}")
    protocol = {
        "train_views": p.train_views,
        "selection": p.selection,
        "inner_folds": p.inner_folds,
        "head_init": p.head_init,
        "choose": p.choose,
        "preset": p.name,
    }
    protocol.update({k: v for k, v in options.items() if v is not None})
    return replace(p.config, **config), protocol


def protocol_record(options: TrainOptions) -> dict[str, Any]:
    """metrics.json's ``protocol``: the preset, the training views, the selection and whether it is
    optimistic."""
    return {
        "preset": options.preset,
        "train_views": options.train_views,
        "selection": options.selection,
        "inner_folds": options.inner_folds if options.selection == "inner" else None,
        "head_init": options.head_init,
        "choose": options.choose,
        "optimistic": options.selection == "fold",
        "tune": options.tune,
    }
