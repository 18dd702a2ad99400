"""End-to-end inference benchmark: latency and throughput per precision/backend, and agreement with fp32.

The verify set is a real run made by the project's own pipeline: a synthetic tree of 450x450 BMP cells
(fastall.data.synth), `extract` at 224 px with a deterministic random-init ResNet-50 (no ImageNet weights
offline),
and `train-head` (the paper's head and schedule). Agreement is what `fastall export --precision auto` checks:
predicted classes against eager fp32 on up to --check-images run images, int8 calibrated on 32 others.
For each configuration: batch-1 latency p50/p90/p99, end-to-end (file -> probabilities) and model-only
(normalised tensor on the device; for ONNX Runtime the graph on decoded uint8 pixels), and throughput per
batch size. Every figure is also given as a ratio against the eager fp32 baseline measured in the same run.
``onnx`` is the `fastall export --format onnx` graph under ONNX Runtime. bf16 configurations run by default
only where the CPU computes bf16 natively.

With ``--loaded N``, each configuration's batch-1 latency is measured again while N busy-looping processes
share the cores; ``loaded_vs_quiet_p50`` is the ratio per configuration (OpenMP threads wait passively, as
fastall sets them; benchmarks/contention.py compares with spinning threads).

    PYTHONPATH=$PWD python3 benchmarks/inference.py --device cpu --out benchmarks/results/inference_cpu.json
    PYTHONPATH=$PWD python3 benchmarks/inference.py --device cpu --emulate avx2 --loaded 4 \
        --out benchmarks/results/inference_cpu_avx2_emulated.json
"""

from __future__ import annotations  # noqa: I001 - fastall first: its OpenMP wait policy must precede torch

import fastall  # noqa: F401
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from benchmarks.common import add_emulate_option, apply_emulation, cpu_load
from fastall.data.loader import default_workers
from fastall.data.synth import synthesize
from fastall.data.walk import find_images
from fastall.features.extract import extract
from fastall.inference.artifacts import RunFolder, model_from_run, open_run
from fastall.inference.bench import PAPER_CLAIMS_MS, latency, onnx_bench, onnx_latency, throughput
from fastall.inference.precision import agrees, calibration_pick, logits, pick_images, try_precision
from fastall.training.config import TrainOptions
from fastall.system.machine import cpu_capability, machine_info
from fastall.training.train_head import train_head

CPU_TARGET_MS = 30.0
DEFAULTS = {
    "cpu": {"configs": "fp32,fp32-jit,int8-jit,onnx", "batch_sizes": "1,8,32"},
    "cuda": {"configs": "fp32,bf16,fp16", "batch_sizes": "1,8,32,256"},
}
NATIVE_BF16_CONFIGS = "bf16-jit,bf16-compile"


def make_run(root: Path, device: str, patients: int, per_patient: int, image_size: int) -> Path:
    """synth -> extract (one view, fp32) -> train-head: the run whose images are the verify set."""
    synthesize(
        root / "data", patients_per_class=patients, images_per_patient=per_patient, size=450, prelim=False
    )
    extract(
        root / "data",
        root / "cache.h5",
        views=1,
        image_size=image_size,
        weights="none",
        device=device,
        precision="fp32",
    )
    options = TrainOptions(folds=5, test="none", device=device, progress=False, report=False)
    train_head(root / "cache.h5", root / "run", options=options)
    return root / "run"


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all cores busy over ``seconds`` (from /proc/stat; 0 where unavailable)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        idle = values[3] + values[4]
        return sum(values) - idle, sum(values)

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return (busy1 - busy0) / max(1, total1 - total0)


def wait_quiet(max_wait_s: float, threshold: float = 0.15, quiet_samples: int = 3) -> float:
    """Wait (up to ``max_wait_s``) until other processes leave the CPU nearly idle; returns the wait.

    The machine is shared: timings taken while others compute are meaningless.
    """
    start, quiet = time.perf_counter(), 0
    while quiet < quiet_samples and time.perf_counter() - start < max_wait_s:
        quiet = quiet + 1 if cpu_busy() < threshold else 0
    return time.perf_counter() - start


def run_images(folder: RunFolder, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(checked, calibration)``: what `fastall export --precision auto` checks on and calibrates with."""
    labels = folder.cache("the benchmark").labels
    checked = pick_images(labels, n)
    calibration = calibration_pick(labels, checked)
    return (
        folder.images(checked, needed_for="the benchmark"),
        folder.images(calibration, needed_for="the benchmark"),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--configs", default=None, help="comma list of precision[-backend], e.g. int8-jit")
    ap.add_argument("--batch-sizes", default=None)
    ap.add_argument("--patients", type=int, default=8, help="synthetic patients per class")
    ap.add_argument("--per-patient", type=int, default=20, help="synthetic images per patient (about)")
    ap.add_argument("--check-images", type=int, default=400)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=None, help="latency rounds, best kept [3 on CPU, 1 on GPU]")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--loaded",
        type=int,
        default=0,
        metavar="N",
        help="also measure batch-1 latency with N busy-looping processes on the cores (0: not)",
    )
    add_emulate_option(ap)
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each configuration, wait up to this many seconds for an idle CPU",
    )
    args = ap.parse_args()
    apply_emulation(args.emulate)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # every configuration, the fp32 baseline included
    default = DEFAULTS[dev.type]["configs"]
    if dev.type == "cpu" and cpu_capability().native_bf16:
        default += "," + NATIVE_BF16_CONFIGS
    configs = (args.configs or default).split(",")
    batch_sizes = [int(b) for b in (args.batch_sizes or DEFAULTS[dev.type]["batch_sizes"]).split(",")]
    t0, load_start = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fastall-inference-") as tmp:
        run = make_run(Path(tmp), args.device, args.patients, args.per_patient, args.image_size)
        files, _ = find_images([Path(tmp) / "data"])
        folder = open_run(run)
        checked, calibration = run_images(folder, args.check_images)
        base = model_from_run(folder, device=args.device)
        reference = logits(base, checked)
        print(f"set-up {time.perf_counter() - t0:.0f}s; {len(checked)} checked images", flush=True)
        results = {}
        for name in configs:
            t = time.perf_counter()
            if name == "onnx":
                results[name] = measure_onnx(Path(tmp), run, files, checked, base, batch_sizes, args)
            else:
                results[name] = measure(name, base, files, checked, calibration, reference, batch_sizes, args)
            r = results[name]
            lat, agree = r["latency_batch1"], r["agreement_vs_fp32"]
            loaded = r.get("loaded_vs_quiet_p50")
            print(
                f"{name:13s} e2e p50 {lat['end_to_end']['p50_ms']:7.2f} ms  model p50 "
                f"{lat['model_only']['p50_ms']:7.2f} ms  agreement {agree['agreement']:.4f}  "
                + (f"loaded/quiet {loaded['end_to_end']:.2f}  " if loaded else "")
                + f"({time.perf_counter() - t:.0f}s)",
                flush=True,
            )
    summary = summarize(results, dev.type)
    out = {
        "benchmark": "inference",
        "emulated": args.emulate != "native",
        "machine": machine_info(dev),
        "device": dev.type,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "config": {
            **vars(args),
            "configs": configs,
            "batch_sizes": batch_sizes,
            "weights": "none (random init, seed 0)",
            "images": "synthetic 450x450 24-bit BMP cells (fastall.data.synth)",
            "verify_set": "run images: synth -> extract (224 px, 1 view, fp32) -> train-head",
        },
        "results": results,
        **summary,
        "seconds": time.perf_counter() - t0,
        "load_average_start_end": [list(load_start), list(os.getloadavg())],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def _state(args: argparse.Namespace, dev: torch.device) -> dict:
    waited = wait_quiet(args.wait_quiet) if args.wait_quiet else 0.0
    return {
        "waited_for_quiet_s": waited,
        "cpu_busy_before": cpu_busy(0.5),
        "rounds": args.rounds or (3 if dev.type == "cpu" else 1),
    }


def _with_loaded(entry: dict, measure_latency, args: argparse.Namespace) -> dict:
    """Batch-1 latency again with ``args.loaded`` burner processes on the cores, and loaded/quiet p50."""
    if not args.loaded:
        return entry
    with cpu_load(args.loaded):
        loaded = measure_latency()
        entry["cpu_busy_loaded"] = cpu_busy(0.5)
    quiet = entry["latency_batch1"]
    entry["latency_batch1_loaded"] = loaded
    entry["burners"] = args.loaded
    entry["loaded_vs_quiet_p50"] = {
        path: loaded[path]["p50_ms"] / quiet[path]["p50_ms"] for path in ("end_to_end", "model_only")
    }
    return entry


def measure(name, base, files, checked, calibration, reference, batch_sizes, args) -> dict:
    """One PyTorch configuration ``precision[-backend]``: agreement, latency (quiet, loaded), throughput."""
    precision, _, backend = name.partition("-")
    dev = base.device
    model, trial = try_precision(
        base, checked, precision, calibration=calibration, backend=backend or "eager", reference=reference
    )
    state = _state(args, dev)

    def measure_latency() -> dict:
        return latency(model, files, warmup=5, iters=args.iters, rounds=state["rounds"])

    lat = measure_latency()
    workers = default_workers(dev)
    tput = [throughput(model, files, bs, batches=3, workers=workers) for bs in batch_sizes]
    entry = {
        "precision": precision,
        "backend": model.backend,
        "agreement_vs_fp32": {
            "agreement": trial.agreement,
            "images": trial.images,
            "max_dprob": trial.max_dprob,
            "mean_dprob": trial.mean_dprob,
        },
        "latency_batch1": lat,
        "throughput": tput,
        **state,
        "load_average_after": list(os.getloadavg()),
    }
    return _with_loaded(entry, measure_latency, args)


def measure_onnx(tmp: Path, run: Path, files, checked, base, batch_sizes, args) -> dict:
    """The `fastall export --format onnx` graph under ONNX Runtime, measured like the PyTorch paths."""
    from fastall.inference.onnx_export import export_onnx, session_for

    path, check = export_onnx(run, tmp / "model.onnx", images=len(checked))
    session = session_for(path)
    state = _state(args, base.device)
    size = base.image_size
    block = onnx_bench(session, base, files, checked, batch_sizes, 5, args.iters, 3, rounds=state["rounds"])

    def measure_latency() -> dict:
        return onnx_latency(session, files, size, warmup=5, iters=args.iters, rounds=state["rounds"])

    entry = {
        "precision": "fp32",
        "backend": "onnxruntime",
        "agreement_vs_fp32": block["agreement_vs_fp32"],
        "export_check": check,
        "latency_batch1": block["latency_batch1"],
        "throughput": block["throughput"],
        "onnx_bytes": path.stat().st_size,
        **state,
        "load_average_after": list(os.getloadavg()),
    }
    return _with_loaded(entry, measure_latency, args)


def summarize(results: dict, device: str) -> dict:
    """Ratios against eager fp32, and the chosen precision: fastest end-to-end p50 with >= 99.5% agreement."""
    base = results.get("fp32")
    ratios = {}
    for name, r in results.items():
        if base is None:
            break
        ratios[name] = {
            "end_to_end_p50_vs_fp32": r["latency_batch1"]["end_to_end"]["p50_ms"]
            / base["latency_batch1"]["end_to_end"]["p50_ms"],
            "model_only_p50_vs_fp32": r["latency_batch1"]["model_only"]["p50_ms"]
            / base["latency_batch1"]["model_only"]["p50_ms"],
            "throughput_vs_fp32": {
                str(t["batch_size"]): t["end_to_end_img_s"] / b["end_to_end_img_s"]
                for t, b in zip(r["throughput"], base["throughput"], strict=True)
            },
        }
    ok = {n: r for n, r in results.items() if agrees(r["agreement_vs_fp32"]["agreement"])}
    name = min(ok, key=lambda n: ok[n]["latency_batch1"]["end_to_end"]["p50_ms"]) if ok else None
    chosen = None
    if name is not None:
        r = ok[name]
        p50 = r["latency_batch1"]["end_to_end"]["p50_ms"]
        chosen = {
            "name": name,
            "precision": r["precision"],
            "backend": r["backend"],
            "agreement_vs_fp32": r["agreement_vs_fp32"]["agreement"],
            "end_to_end_p50_ms": p50,
            "model_only_p50_ms": r["latency_batch1"]["model_only"]["p50_ms"],
            "paper_claim_ms": PAPER_CLAIMS_MS[device],
            "p50_vs_paper_claim": p50 / PAPER_CLAIMS_MS[device],
            "end_to_end_vs_model_only_throughput": {
                str(t["batch_size"]): t["end_to_end_vs_model_only"] for t in r["throughput"]
            },
        }
        if device == "cpu":
            chosen.update(
                target_ms=CPU_TARGET_MS, p50_vs_target=p50 / CPU_TARGET_MS, meets_target=p50 <= CPU_TARGET_MS
            )
    ranked = sorted(ok, key=lambda n: ok[n]["latency_batch1"]["end_to_end"]["p50_ms"])
    passing = [
        {
            "name": n,
            "end_to_end_p50_ms": ok[n]["latency_batch1"]["end_to_end"]["p50_ms"],
            "agreement_vs_fp32": ok[n]["agreement_vs_fp32"]["agreement"],
        }
        for n in ranked
    ]
    loaded = {n: r["loaded_vs_quiet_p50"] for n, r in results.items() if "loaded_vs_quiet_p50" in r}
    return {
        "ratios_vs_fp32": ratios,
        "chosen": chosen,
        "agreeing_configs_by_speed": passing,
        "loaded_vs_quiet_p50": loaded or None,
    }


if __name__ == "__main__":
    main()
