"""Wall time of `fastall demo` and `fastall bench --device cpu` with their defaults, each in a fresh process
(``python -m fastall``, as a user runs it), against the targets on 2 CPU cores: demo <= 120 s, bench <= 60 s.

The demo's stages (synth, extract, train-head) come from its own report; the precision its extract chose,
and why, from the cache it wrote. bench's up-front estimate is recorded beside its measured wall time.

    PYTHONPATH=$PWD python3 benchmarks/cli_time.py --out benchmarks/results/cli_time_cpu.json
    PYTHONPATH=$PWD python3 benchmarks/cli_time.py --emulate avx2 \\
        --out benchmarks/results/cli_time_cpu_avx2_emulated.json
"""

from __future__ import annotations  # noqa: I001 - fastall first: its OpenMP wait policy must precede torch

import fastall  # noqa: F401
import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

from benchmarks.common import add_emulate_option, apply_emulation, write_result

TARGETS_S = {"demo": 120.0, "bench": 60.0}
STAGES = re.compile(r"demo finished in (\d+) s \(synth (\d+) s, extract (\d+) s, train-head ([\d.]+) s\)")
DEMO_CODE = (
    "import json, sys; from fastall.demo import run_demo; "
    "r = run_demo(sys.argv[1], device='cpu', **json.loads(sys.argv[2])); print(json.dumps(r.seconds))"
)


def _run(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return done, time.perf_counter() - start


def time_demo(kwargs: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="fastall-demo-") as tmp:
        out = Path(tmp) / "demo"
        if kwargs:  # smaller than the real demo: for smoke tests only
            cmd = [sys.executable, "-c", DEMO_CODE, str(out), json.dumps(kwargs)]
        else:
            cmd = [sys.executable, "-m", "fastall", "demo", "--out", str(out), "--device", "cpu"]
        done, wall = _run(cmd, timeout)
        text = done.stdout + done.stderr
        result = {
            "command": shlex.join(cmd[:1] + ["..."] + cmd[-4:]),
            "returncode": done.returncode,
            "wall_s": wall,
        }
        match = STAGES.search(" ".join(text.split()))
        if match:
            result["stages_s"] = dict(
                zip(("total", "synth", "extract", "train_head"), map(float, match.groups()), strict=True)
            )
        elif kwargs and done.returncode == 0:
            result["stages_s"] = json.loads(done.stdout.strip().splitlines()[-1])
        cache = out / "features.h5"
        if cache.is_file():
            with h5py.File(cache, "r") as f:
                keep = (
                    "amp_dtype",
                    "precision_requested",
                    "precision_reason",
                    "cpu_capability_label",
                    "weights",
                )
                result["extract_precision"] = {k: _plain(f.attrs.get(k)) for k in keep}
        if done.returncode != 0:
            result["stderr_tail"] = text[-2000:]
    result["target_s"] = TARGETS_S["demo"]
    result["meets_target"] = done.returncode == 0 and wall <= TARGETS_S["demo"]
    return result


def time_bench(extra: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "fastall", "bench", "--device", "cpu", "--json", *extra]
    done, wall = _run(cmd, timeout)
    result = {"command": shlex.join(["fastall", *cmd[3:]]), "returncode": done.returncode, "wall_s": wall}
    if done.returncode == 0:
        report = json.loads(done.stdout)
        result.update(
            estimated_s=report["estimated_s"],
            estimate_vs_wall=report["estimated_s"] / wall,
            settings=report["settings"],
            precision=report["precision"],
            backend=report["backend"],
            end_to_end_p50_ms=report["latency_batch1"]["end_to_end"]["p50_ms"],
            throughput={str(t["batch_size"]): t["end_to_end_img_s"] for t in report["throughput"]},
        )
    else:
        result["stderr_tail"] = done.stderr[-2000:]
    result["target_s"] = TARGETS_S["bench"]
    result["meets_target"] = done.returncode == 0 and wall <= TARGETS_S["bench"]
    return result


def _plain(value):
    return (
        value.decode() if isinstance(value, bytes) else value if not hasattr(value, "item") else value.item()
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--what", default="demo,bench")
    ap.add_argument("--bench-args", default="", help="extra `fastall bench` options (smoke tests only)")
    ap.add_argument("--demo-kwargs", default="{}", help="JSON run_demo() sizes (smoke tests only)")
    ap.add_argument("--timeout", type=float, default=1200.0)
    add_emulate_option(ap)
    args = ap.parse_args()
    apply_emulation(args.emulate)
    result = {"benchmark": "cli_time", "emulated": args.emulate != "native", "settings": vars(args)}
    for what in args.what.split(","):
        t0 = time.perf_counter()
        if what == "demo":
            result["demo"] = time_demo(json.loads(args.demo_kwargs), args.timeout)
        elif what == "bench":
            result["bench"] = time_bench(shlex.split(args.bench_args), args.timeout)
        else:
            raise SystemExit(f"--what: unknown {what!r} (demo, bench)")
        print(f"{what}: {time.perf_counter() - t0:.0f} s", flush=True)
    write_result(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k in ("demo", "bench")}, indent=2))


if __name__ == "__main__":
    main()
