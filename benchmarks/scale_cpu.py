"""Scale-out on this machine: 2 torchrun ranks against 1 process, and what joining real-size shards costs.

(a) `fastall extract` of a synthetic tree (450x450 BMPs, --weights none), each a fresh command timed by the
    wall clock: one process using every core's threads (the baseline), `torchrun --nproc_per_node 2` with one
    thread per rank, and one process with one thread; the 2-rank cache is checked bit for bit against the
    baseline's;
(b) the join at real size (10,661 x 8 x 2048 float16): per-rank shard stores are simulated in the real
    PartialStore format (batches of --shard-images), then 2 ranks run the real join (`join_shards`: load the
    shards, gather them over gloo, put them in order) and rank 0 the real single writer (`write_cache`);
    baseline: a plain run's own assembly of the same data (load its shards, stack, `write_cache`);
(c) the single writer's throughput: feature MB/s of `write_cache`, against a plain sequential write of the
    same bytes (numpy tofile + fsync) to the same disk in the same run.

Ratios: speedup = 2-rank rate / 1-process rate; join share = join seconds / seconds to extract 10,661 images
at the 2-rank rate of (a). Goal: join share <= 0.05.

    PYTHONPATH=$PWD python benchmarks/scale_cpu.py --out benchmarks/results/scale_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from extract_throughput import build_tree  # noqa: E402

from fastall.features.augment import VIEW_PARAM_NAMES  # noqa: E402
from fastall.features.cache import ImageRows, write_cache  # noqa: E402
from fastall.features.shards import PartialStore, partial_folder, rank_folder  # noqa: E402
from fastall.system.machine import machine_info  # noqa: E402

REAL = {"images": 10661, "views": 8, "dim": 2048}
KEY = "0" * 64


def _env(threads: int) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads)}


def _timed(cmd: list[str], threads: int) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=_env(threads), capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
    return seconds


def extract_runs(data: Path, tmp: Path, args: argparse.Namespace, images: int) -> dict:
    flags = ["--views", str(args.views), "--image-size", str(args.image_size), "--weights", "none"]
    flags += ["--device", "cpu", "--workers", "0", "--batch-size", str(args.batch_size)]
    plain = [sys.executable, "-m", "fastall"]
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *plain[1:]]
    cores = os.cpu_count() or 1
    configs = {
        "1_process_all_cores": (plain, cores),
        "2_ranks_1_thread_each": (run, 1),
        "1_process_1_thread": (plain, 1),
    }
    _timed([*plain, "extract", str(data), "--out", str(tmp / "warm.h5"), *flags], cores)
    out: dict = {}
    for name, (prefix, threads) in configs.items():
        target = tmp / f"{name}.h5"
        seconds = _timed([*prefix, "extract", str(data), "--out", str(target), *flags], threads)
        out[name] = {"seconds": seconds, "images_per_s": images / seconds, "threads_per_process": threads}
    out["identical_features_2_ranks_vs_1_process"] = _same_features(
        tmp / "1_process_all_cores.h5", tmp / "2_ranks_1_thread_each.h5"
    )
    return out


def _same_features(a: Path, b: Path) -> bool:
    import h5py

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        return all(np.array_equal(fa[k][()], fb[k][()]) for k in ("features", "view_params", "path"))


def simulate_shards(target: Path, world: int, n: int, views: int, dim: int, per_shard: int) -> float:
    """Per-rank shard stores as `extract` leaves them (strided shares, one npz per batch); returns seconds."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    block = rng.standard_normal((per_shard, views, dim), dtype=np.float32).astype(np.float16)
    params = rng.random((per_shard, views, len(VIEW_PARAM_NAMES)), dtype=np.float32)
    base = partial_folder(target)
    for rank in range(world):
        store = PartialStore(target, rank_folder(base, rank, world))
        store.start(KEY, {"simulated": True})
        mine = np.arange(rank, n, world)
        for at in range(0, len(mine), per_shard):
            idx = mine[at : at + per_shard]
            store.write_shard(idx, block[: len(idx)], params[: len(idx)])
    return time.perf_counter() - start


def _write(target: Path, rows: list[int], features: np.ndarray, params: np.ndarray) -> None:
    """The real single writer, with the real C-NMC patients and labels (tests/featcache.py)."""
    from featcache import manifest_layout

    patients, labels = manifest_layout()
    n = len(rows)
    write_cache(
        target,
        features=features,
        rows=ImageRows(
            labels=np.resize(labels, n),
            patients=list(np.resize(np.asarray(patients, dtype=object), n)),
            paths=[f"C-NMC_Leukemia/training_data/fold_0/all/UID_{i}_1_1_all.bmp" for i in rows],
            sources=["fold_0"] * n,
        ),
        class_names=["hem", "all"],
        view_params=params,
        view_param_names=list(VIEW_PARAM_NAMES),
        key_params={"simulated": True},
        provenance={"created": "benchmark"},
    )


def join_worker(target: Path, n: int, views: int, dim: int, result: Path) -> None:
    """One rank of the timed join (run under torchrun): rank 0 writes the timings to ``result``."""
    from fastall.features.ranks import join_shards
    from fastall.system.distributed import Group, detect

    env = detect(True)
    store = PartialStore(target, rank_folder(partial_folder(target), env.rank, env.world))
    with Group(env, "cpu", timeout=1800) as group:
        group.wait()
        t0 = time.perf_counter()
        joined = join_shards(group, store, n, views, dim, KEY)
        t1 = time.perf_counter()
        if joined is not None:
            rows, features, params = joined[:3]
            _write(target, rows, features, params)
            t2 = time.perf_counter()
            raw = target.with_name("raw.bin")
            with open(raw, "wb") as fh:
                features.tofile(fh)
                fh.flush()
                os.fsync(fh.fileno())
            t3 = time.perf_counter()
            raw.unlink()
            mb = features.nbytes / 1e6
            timings = {
                "gather_seconds": t1 - t0,
                "write_seconds": t2 - t1,
                "join_seconds": t2 - t0,
                "feature_mb": mb,
                "cache_mb": target.stat().st_size / 1e6,
                "writer_mb_per_s": mb / (t2 - t1),
                "raw_write_mb_per_s": mb / (t3 - t2),
            }
            result.write_text(json.dumps(timings))
        group.wait()


def single_finalize(tmp: Path, n: int, views: int, dim: int, per_shard: int) -> float:
    """A plain run's own assembly of the same data (load its shards, stack, write): the join's baseline."""
    target = tmp / "single" / "cache.h5"
    target.parent.mkdir()
    simulate_shards(target, 1, n, views, dim, per_shard)
    start = time.perf_counter()
    done, _ = PartialStore(target).load(n, views, dim)
    rows = sorted(done)
    features = np.stack([done[i][0] for i in rows])
    params = np.stack([done[i][1] for i in rows])
    _write(target, rows, features, params)
    return time.perf_counter() - start


def join_run(tmp: Path, args: argparse.Namespace) -> dict:
    target = tmp / "join" / "cache.h5"
    target.parent.mkdir()
    n, views, dim = args.join_images, REAL["views"], REAL["dim"]
    simulate = simulate_shards(target, 2, n, views, dim, args.shard_images)
    result = tmp / "join.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__]
    _timed([*cmd, "--join-worker", str(target), str(n), str(views), str(dim), str(result)], 1)
    timings = json.loads(result.read_text())
    timings["single_process_finalize_seconds"] = single_finalize(tmp, n, views, dim, args.shard_images)
    settings = {"images": n, "views": views, "dim": dim, "shard_images": args.shard_images}
    return {**settings, "simulate_shards_seconds": simulate, **timings}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--join-worker":
        target, n, views, dim, result = sys.argv[2:7]
        join_worker(Path(target), int(n), int(views), int(dim), Path(result))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=128, help="images in the extract comparison")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--join-images", type=int, default=REAL["images"])
    ap.add_argument("--shard-images", type=int, default=32, help="images per shard [extract's CPU batch]")
    args = ap.parse_args()
    result: dict = {
        "benchmark": "scale_cpu",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info("cpu"),
        "settings": {k: getattr(args, k) for k in ("images", "views", "image_size", "batch_size")},
    }
    tmp = Path(tempfile.mkdtemp(prefix="fastall-scale-"))
    try:
        images = build_tree(tmp / "data", args.images)
        result["settings"]["images"] = images
        result["extract"] = extract_runs(tmp / "data", tmp, args, images)
        result["join"] = join_run(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ex, join = result["extract"], result["join"]
    two = ex["2_ranks_1_thread_each"]["images_per_s"]
    extract_join_size = join["images"] / two
    result["ratios"] = {
        "speedup_2_ranks_vs_1_process_all_cores": two / ex["1_process_all_cores"]["images_per_s"],
        "speedup_2_ranks_vs_1_process_1_thread": two / ex["1_process_1_thread"]["images_per_s"],
        "join_share_of_extract": join["join_seconds"] / extract_join_size,
        "writer_vs_raw_write": join["writer_mb_per_s"] / join["raw_write_mb_per_s"],
        "join_vs_single_process_finalize": join["join_seconds"] / join["single_process_finalize_seconds"],
    }
    result["extract_seconds_at_join_size_2_ranks"] = extract_join_size
    result["goal"] = {"join_share_of_extract": 0.05}
    result["note"] = (
        "extract: wall clock of whole commands (process start, backbone build, discovery, loop, join, HDF5 "
        f"write) at {args.views} views x {args.image_size} px; join share: the measured join against the "
        "extract of the join's image count at the measured 2-rank rate"
    )
    result["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("settings", "ratios")}, indent=2))


if __name__ == "__main__":
    main()
