"""What `fastall bench` measures: one ``BenchConfig``, declared once.

Each field is a :func:`~fastall.system.settings.hparam`; the ``fastall bench`` options (flag, type, choices,
help) and :func:`~fastall.inference.bench.run_bench`'s keyword arguments come from these declarations. Adding
a setting: declare the field here and read ``config.NAME`` in ``bench.py``; the ``--name`` option appears by
itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fastall.errors import FastallError
from fastall.system.devices import DEVICE_RULE
from fastall.system.settings import HParam, hparam, hparams_of

BENCH_PRECISIONS = ("fp32", "bf16", "fp16", "int8")


@dataclass(frozen=True)
class BenchConfig:
    """Every setting of one benchmark (the CLI's defaults). ``None``/empty: the device's own default."""

    device: str = hparam("auto", DEVICE_RULE)
    batch_sizes: tuple[int, ...] = hparam(
        (),
        "Throughput batch sizes [1,8,32 on CPU; 1,8,32,256 on GPU].",
        check=lambda v: all(b >= 1 for b in v),
        rule="must be positive",
    )
    precision: str = hparam(
        "fp32",
        "auto: bf16 where the device computes it natively, else fp32; int8: CPU only, calibrated on the "
        "benchmark images.",
        choices=("auto", *BENCH_PRECISIONS),
    )
    threads: int | None = hparam(
        None,
        "CPU threads for torch, at most the usable cores [all of them].",
        check=lambda v: v >= 1,
        rule="must be at least 1",
    )
    run: str | None = hparam(None, "A trained run [a random-init backbone and a random head, timing only].")
    images: int = hparam(32, "Synthetic 450x450 BMP files.", check=lambda v: v >= 1, rule="must be positive")
    image_size: int | None = hparam(
        None,
        "Without --run [the backbone's own size: 224].",
        check=lambda v: 32 <= v <= 2048,
        rule="must be 32..2048",
    )
    backbone: str = hparam(
        "resnet50",
        "Without --run: the random-init backbone to time (resnet18 ... vit_b_16, dinobloom-s, timm:NAME).",
    )
    warmup: int = hparam(3, "Untimed batch-1 calls first.", check=lambda v: v >= 0, rule="must be >= 0")
    iters: int = hparam(20, "Timed batch-1 calls.", check=lambda v: v >= 1, rule="must be positive")
    batches: int | None = hparam(
        None,
        "Timed batches per batch size [2 on CPU, 3 on GPU].",
        check=lambda v: v >= 1,
        rule="must be positive",
    )
    workers: int | None = hparam(
        None,
        "Decoding processes [0 on CPU, most cores on GPU].",
        check=lambda v: v >= 0,
        rule="must be non-negative",
    )
    backend: str = hparam(
        "auto",
        "CPU: jit (TorchScript freeze, oneDNN fusion; auto), compile (torch.compile, inductor) or eager.",
        choices=("auto", "eager", "jit", "compile"),
    )
    onnx: str | None = hparam(
        None, "Also time this ONNX model (from `fastall export --format onnx`) with ONNX Runtime."
    )

    @staticmethod
    def settings() -> tuple[HParam, ...]:
        return hparams_of(BenchConfig)

    @classmethod
    def of(cls, config: BenchConfig | None = None, **settings: Any) -> BenchConfig:
        """``config`` (or the defaults) with ``settings`` on top, checked; every problem at once."""
        unknown = sorted(set(settings) - {s.name for s in cls.settings()})
        if unknown:
            raise FastallError(f"bench has no setting {', '.join(unknown)}")
        for name in ("run", "onnx"):
            if settings.get(name) is not None:
                settings[name] = str(settings[name])
        if settings.get("batch_sizes") is not None:
            settings["batch_sizes"] = tuple(settings["batch_sizes"])
        else:
            settings.pop("batch_sizes", None)
        cfg = replace(config or cls(), **settings)
        problems = [p for s in cls.settings() if (p := s.flag_problem(getattr(cfg, s.name)))]
        if problems:
            raise FastallError("; ".join(problems))
        return cfg
