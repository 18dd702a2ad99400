"""Batch-1 latency under CPU contention: why it collapses (OpenMP threads spinning), and fastall's fix.

For each precision (TorchScript fp32 and int8 of a random-init ResNet-50 + head) x OpenMP wait policy x torch
threads, one child process builds the model once, then times batch-1 forwards (uint8 pixels -> logits) twice:
on the machine as it is ("quiet") and with N busy-looping processes on the cores ("loaded"). Policies:
``default`` is the OpenMP runtime's own (torch imported before fastall: threads spin ~300k iterations at
every barrier); ``PASSIVE`` is what fastall sets (threads sleep). Ratios: loaded/quiet p50 per child, and
default/PASSIVE p50 per state, measured in the same run.

    PYTHONPATH=$PWD python3 benchmarks/contention.py --out benchmarks/results/contention_cpu.json
    PYTHONPATH=$PWD python3 benchmarks/contention.py --emulate avx2 \\
        --out benchmarks/results/contention_cpu_avx2_emulated.json
"""

from __future__ import annotations  # noqa: I001 - the child imports torch before fastall on purpose

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(precision: str, threads: int, size: int, iters: int) -> None:
    """Build once, then time ``iters`` batch-1 calls for each state named on stdin; one JSON line each."""
    import statistics

    import torch  # before fastall: the OpenMP policy is whatever the environment says

    sys.path.insert(0, str(ROOT))
    from fastall.inference.bench import random_model

    torch.set_num_threads(threads)
    model = random_model(size)
    calibration = torch.randint(0, 256, (16, 3, size, size), dtype=torch.uint8)
    model = model.optimize(precision, calibration=calibration if precision == "int8" else None, backend="jit")
    x = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)
    print("ready", flush=True)
    for state in sys.stdin:
        with torch.inference_mode():
            for _ in range(3):
                model(x)
            times = []
            for _ in range(iters):
                start = time.perf_counter()
                model(x)
                times.append(1e3 * (time.perf_counter() - start))
        print(
            json.dumps(
                {
                    "state": state.strip(),
                    "p50_ms": statistics.median(times),
                    "p90_ms": sorted(times)[int(0.9 * (len(times) - 1))],
                    "min_ms": min(times),
                    "iters": iters,
                    "load_average": os.getloadavg()[0],
                }
            ),
            flush=True,
        )


def measure(precision: str, policy: str, threads: int, args: argparse.Namespace, cpu_load) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    cmd = [
        sys.executable,
        __file__,
        "--child",
        precision,
        str(threads),
        str(args.image_size),
        str(args.iters),
    ]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"child {cmd} failed to start")
        out = {}
        for state in ("quiet", "loaded"):
            if state == "loaded":
                with cpu_load(args.burners):
                    proc.stdin.write("loaded\n")
                    proc.stdin.flush()
                    out[state] = json.loads(proc.stdout.readline())
            else:
                proc.stdin.write("quiet\n")
                proc.stdin.flush()
                out[state] = json.loads(proc.stdout.readline())
        proc.stdin.close()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out["loaded_vs_quiet_p50"] = out["loaded"]["p50_ms"] / out["quiet"]["p50_ms"]
    return {"precision": precision, "omp_wait_policy": policy, "threads": threads, **out}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import add_emulate_option, apply_emulation, cpu_load, write_result

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--policies", default="default,PASSIVE")
    ap.add_argument("--threads", default=None, help="comma list [all cores,1]")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument(
        "--burners", type=int, default=None, help="busy processes for the loaded state [2 x cores]"
    )
    add_emulate_option(ap)
    args = ap.parse_args()
    apply_emulation(args.emulate)
    cores = os.cpu_count() or 1
    args.burners = args.burners or 2 * cores
    threads = [int(t) for t in (args.threads or f"{cores},1").split(",")]
    t0 = time.perf_counter()
    rows = []
    for precision in args.precisions.split(","):
        for policy in args.policies.split(","):
            for n in dict.fromkeys(threads):
                row = measure(precision, policy, n, args, cpu_load)
                rows.append(row)
                print(
                    f"{precision:5s} {policy:8s} threads {n}: quiet {row['quiet']['p50_ms']:8.1f} ms  loaded "
                    f"{row['loaded']['p50_ms']:8.1f} ms  ({row['loaded_vs_quiet_p50']:.1f}x)",
                    flush=True,
                )
    spin_vs_passive = {}
    for r in rows:
        if r["omp_wait_policy"] != "default":
            continue
        twin = next(
            (
                p
                for p in rows
                if p["omp_wait_policy"] == "PASSIVE"
                and (p["precision"], p["threads"]) == (r["precision"], r["threads"])
            ),
            None,
        )
        if twin is not None:
            spin_vs_passive[f"{r['precision']}/threads={r['threads']}"] = {
                s: r[s]["p50_ms"] / twin[s]["p50_ms"] for s in ("quiet", "loaded")
            }
    write_result(
        args.out,
        {
            "benchmark": "contention",
            "emulated": args.emulate != "native",
            "settings": {**vars(args), "threads": threads},
            "rows": rows,
            "default_vs_passive_p50": spin_vs_passive,
            "seconds": time.perf_counter() - t0,
        },
    )
    print(json.dumps(spin_vs_passive, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
