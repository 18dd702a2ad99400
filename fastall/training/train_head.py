"""`fastall train-head`: patient-level k-fold CV of the head from the feature cache, plus test metrics.

One stack trains the k fold heads and the final head (all non-test images, kept at the median of the folds'
best-epoch counts) together. Test metrics come from the final head and from the ensemble of fold heads.
Outputs (written atomically, ``run_outputs``): metrics.json, folds.csv, predictions.csv, head.pt and report/
(the HTML report, unless ``options.report`` is off).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastall.errors import FastallError
from fastall.system.events import Reporter, silent
from fastall.system.runfolder import check_target
from fastall.training import run_outputs
from fastall.training.config import TRAIN_VIEWS, HeadConfig, HeadResult, TrainOptions, split_keywords
from fastall.training.divergence import check_divergence
from fastall.training.engine import time_floor, train_stacks
from fastall.training.grid import check_budget, count_configs, expand, parse_grid
from fastall.training.prepared import Prepared, prepare
from fastall.training.presets import PRESETS, protocol_record
from fastall.training.probe import LinearFits, ProbeResult, probe_cache
from fastall.training.run_warnings import precision_warning, verdict_of
from fastall.training.selection import refit, select
from fastall.training.views import view_shift

__all__ = ["Prepared", "RunResult", "prepare", "train_head"]  # Prepared, prepare: training.prepared


@dataclass
class RunResult:
    """What train-head wrote: the run folder and the content of its metrics.json."""

    out: Path
    metrics: dict[str, Any]
    report: Any = None  # fastall.reporting.run_report.Report: the HTML report's path and notes

    @property
    def summary(self) -> dict:
        return self.metrics["summary"]

    @property
    def folds(self) -> list[dict]:
        return self.metrics["folds"]

    @property
    def test(self) -> dict | None:
        return self.metrics["test"]

    @property
    def warnings(self) -> list[dict[str, str]]:
        """The run's warnings as ``{"code", "text"}`` records (metrics.json's ``warnings``)."""
        return self.metrics["warnings"]


def train_head(
    cache_path: str | Path,
    out: str | Path,
    config: HeadConfig | None = None,
    options: TrainOptions | None = None,
    reporter: Reporter | None = None,
    **keywords: Any,
) -> RunResult:
    """Cross-validate one head configuration by patient and write the run folder ``out``.

    ``config`` defaults to the paper's head (Adam 1e-4, batch 32, 5 epochs, dropout 0.5, 512 hidden) with
    ReduceLROnPlateau (factor 0.1, patience 2); without ``patience`` every fold keeps its last epoch, with it
    training stops after ``patience`` epochs without a lower validation loss and the best epoch is restored.
    ``options`` say how it runs (folds, test set, seed, device, ...) and by which protocol (training views,
    selection on the fold or on an inner split, head start, ``tune``); their defaults are the paper's, the
    CLI's default is ``apply_preset("default", {}, {})`` (``presets``). The linear-probe baseline is fitted
    on the same folds unless ``options.probe`` is off. The flat keywords of earlier versions
    (``lr=..., folds=...``) still work and override both.

    Silent: progress and lines go to ``reporter`` (``fastall.system.events``; the CLI's draws them), and the
    run's warnings come back as records (``RunResult.warnings``, also given to ``reporter.warn``).
    """
    t_start = time.perf_counter()
    config, options = split_keywords(config, options, keywords)
    config.check()
    configs = check_protocol(config, options)
    out = Path(out)
    check_target(out.absolute(), options.overwrite, run_outputs.RUN_FORMAT)
    prep = prepare(cache_path, options)
    warnings = prep.warnings
    warnings.add("precision", precision_warning(prep))
    reporter = reporter or silent()
    if options.tune:
        pool = int(prep.splits.pool.size)
        estimate = check_budget(len(configs), options.folds, pool, prep.data.classes, "--tune")
        if options.progress:
            floor = time_floor(configs, options.folds, pool, prep.data.dim, prep.device)
            reporter.info(f"--tune: {estimate}; {floor}", code="estimate")
    shift = view_shift(prep.cache.features, prep.splits.pool, options.train_views)
    if shift["large"]:
        warnings.add("view_shift", shift["message"])
    t0 = time.perf_counter()
    probe = probe_cache(prep.cache, prep.splits, positive=prep.positive.index) if options.probe else None
    probe_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    results, selection = train_by_protocol(prep, configs, options, probe, reporter)
    choice = None
    if options.choose and selection is not None and probe is not None and not options.tune:
        from fastall.training.choice import choose

        choice = choose(prep, configs[0], options, probe, results, linear_fit(prep, options.seed))
        warnings.extend("model_choice", choice.notes)
    if selection is not None:
        config = configs[selection.final_config]
        warnings.extend("selection", selection.notes)
    train_s = time.perf_counter() - t0
    check_divergence(results, config.lr, config.weight_decay, warnings)
    run_config = {
        "folds": options.folds,
        "test": options.test,
        "holdout": options.holdout,
        **asdict(config),
        "tta": options.tta,
        "seed": options.seed,
        "device": prep.device.type,
        "precision": prep.precision,
        "train_views": options.train_views,
        "selection": options.selection,
        "head_init": options.head_init,
        "positive": prep.positive.name,
        **({"preset": options.preset} if options.preset else {}),
        **({"dedupe": True} if options.dedupe else {}),
    }
    metrics = run_outputs.run_metrics(prep, results, run_config, options.tta)
    metrics["protocol"] = protocol_record(options)
    metrics["feature_shift"] = shift
    if choice is not None:
        metrics["model_choice"] = choice.record()
    if selection is not None:
        metrics["selection"] = selection.record(prep.cache.patients)
        if options.tune:
            metrics["tune"] = {"grid": options.tune, "configs": [asdict(c) for c in configs]}
    if probe is not None:
        metrics["probe"] = probe.to_json()
        metrics["baseline"] = baseline(
            metrics["summary"], probe.summary, (metrics["test"] or {}).get("final"), probe.test
        )
        metrics["verdict"] = verdict_of(prep, results, probe, options, choice)
        code = {"is": "head_is_probe", "beats": "probe_verdict"}.get(metrics["verdict"]["verdict"])
        warnings.add(code or "probe_verdict", metrics["verdict"]["text"])
    metrics["warnings"] = warnings.items
    for record in warnings.items:
        reporter.warn(record["code"], record["text"])
    timings = {"started": t_start, "load_cache_s": prep.load_s, "train_s": train_s, "probe_s": probe_s}
    made = run_outputs.publish_run(
        out,
        prep,
        results,
        metrics,
        options,
        timings,
        lambda tmp: run_outputs.write_head(tmp / "head.pt", prep, results, config, run_config),
    )
    return RunResult(out.absolute(), metrics, made)


def check_protocol(config: HeadConfig, options: TrainOptions) -> list[HeadConfig]:
    """The configurations to train (``options.tune``: the grid on top of ``config``), after checking the
    protocol options; FastallError with the valid choices otherwise."""
    if options.train_views not in TRAIN_VIEWS:
        raise FastallError(f"unknown --train-views {options.train_views!r}: use {' or '.join(TRAIN_VIEWS)}")
    if options.selection not in ("inner", "fold"):
        raise FastallError(f"unknown --selection {options.selection!r}: use inner or fold")
    if options.preset is not None and options.preset not in PRESETS:
        raise FastallError(f"unknown preset {options.preset!r}: use {' or '.join(PRESETS)}")
    if not options.tune:
        return [config]
    if options.selection != "inner":
        raise FastallError(
            "--tune chooses on an inner split: it needs --selection inner (not the paper preset)"
        )
    spec = parse_grid(options.tune, flag="--tune")
    check_budget(count_configs(spec), options.folds, 0, 2, "--tune")  # before making them; again once loaded
    return [c.check() for c in expand(spec, config)]


def train_by_protocol(
    prep: Prepared,
    configs: list[HeadConfig],
    options: TrainOptions,
    probe: ProbeResult | None,
    reporter: Reporter | None = None,
) -> tuple[list[HeadResult], Any]:
    """Train the fold heads and the final head: selecting on the reported fold (the paper's) or on an inner
    split (``selection``); returns the results and the Selection (None for ``fold``)."""
    run = {"seed": options.seed, "precision": prep.precision}
    with epoch_progress(reporter if options.progress else None, configs[0].epochs) as on_progress:
        if options.selection == "fold":
            tta = options.tta
            return train_stacks(prep.data, configs, final=True, tta=tta, progress=on_progress, **run), None
        fit = linear_fit(prep, options.seed) if options.head_init == "probe" else None
        chosen = select(
            prep.data,
            configs,
            prep.cache.patients,
            inner_folds=options.inner_folds,
            linear_init=fit,
            progress=on_progress,
            class_names=prep.cache.class_names,
            **run,
        )
        inits = None
        if fit is not None:
            k = prep.data.classes
            fits = probe.fits if probe is not None else []
            inits = [
                fits[i].linear_map(k) if i < len(fits) else fit(tr)
                for i, (tr, _) in enumerate(prep.data.folds)
            ]
            has_final = probe is not None and probe.test is not None
            inits.append(fits[-1].linear_map(k) if has_final else fit(prep.data.pool))
        results = refit(prep.data, chosen, tta=options.tta, linear_inits=inits, progress=on_progress, **run)
        return results, chosen


def linear_fit(prep: Prepared, seed: int) -> LinearFits:
    """rows -> the linear map of the probe fitted on view 0 of those rows alone (C by inner CV on them)."""
    view0, labels, patients = prep.cache.features[:, 0], prep.cache.labels, prep.cache.patients
    return LinearFits(view0, labels, patients, prep.data.classes, seed)


def baseline(head: dict, probe: dict, head_test: dict | None, probe_test: dict | None) -> dict[str, Any]:
    """The number to beat: the linear probe's mean CV accuracy and AUC beside the head's, and the gaps."""

    def gap(a: dict | None, b: dict | None, key: str) -> float | None:
        if not a or not b or a.get(key) is None or b.get(key) is None:
            return None
        return float(a[key]) - float(b[key])

    return {
        "name": "linear probe (standardised logistic regression on view 0, C by inner CV)",
        "cv_accuracy": probe.get("accuracy"),
        "cv_auc": probe.get("auc"),
        "head_minus_probe_cv_accuracy": gap(head, probe, "accuracy"),
        "head_minus_probe_cv_auc": gap(head, probe, "auc"),
        "head_minus_probe_test_accuracy": gap(head_test, probe_test, "accuracy"),
    }


@contextmanager
def epoch_progress(reporter: Reporter | None, epochs: int) -> Iterator[Callable[..., None] | None]:
    """The engine's ``progress(group, groups, done, total)`` as a ``training heads`` task of ``reporter``
    (None: no callback at all)."""
    if reporter is None:
        yield None
        return
    with reporter.task("training heads", epochs, transient=True, eta=False) as advance:
        last = 0

        def on_progress(group: int, groups: int, done: int, total: int) -> None:
            nonlocal last
            where = f"training heads, group {group + 1}/{groups}"
            advance(done - last, total=total, description=where)
            last = done

        yield on_progress
