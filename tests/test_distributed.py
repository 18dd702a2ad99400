"""torchrun: 2 CPU ranks (gloo) give the single-process cache and CSV bit for bit; a dead or hung rank stops
the others with one clear line; a rerun resumes; a rank may have no work; the pieces on their own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from extract_helpers import assert_same_cache, one_thread, run_extract, tiny_tree
from PIL import Image

from fastall.cli import cli
from fastall.errors import CacheError, FastallError
from fastall.features.cache import read_cache
from fastall.features.ranks import coverage_problem
from fastall.features.shards import claim_layout, partial_folder, rank_folder
from fastall.system.distributed import DistEnv, detect, share

ROOT = Path(__file__).resolve().parents[1]
_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)
EXTRACT = ["--views", "3", "--image-size", "32", "--weights", "none", "--device", "cpu", "--workers", "0"]
LIMIT = 240  # seconds for any launch, on a busy 2-core machine


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m fastall ARGS`` (torchrun picks a free port); on a timeout
    the agent and its workers are killed together."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.Popen(
        [*cmd, "-m", "fastall", *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def launch(
    argv: list[str],
    world: int = 2,
    per_rank: dict[int, dict[str, str]] | None = None,
    only_rank0: bool = False,
) -> list:
    """``argv`` on ``world`` processes with torchrun's environment but no torchrun agent (so that a killed
    rank is not followed by the launcher killing the rest): ``[(returncode, output, seconds)]`` by rank.
    ``only_rank0``: the others are killed once rank 0 has exited."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start, procs = time.monotonic(), []
    for rank in range(world):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **(per_rank or {}).get(rank, {}))
        procs.append(
            subprocess.Popen(
                argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
            )
        )
    results = []
    try:
        for proc in procs[:1] if only_rank0 else procs:
            out, _ = proc.communicate(timeout=max(1.0, LIMIT - (time.monotonic() - start)))
            results.append((proc.returncode, out, time.monotonic() - start))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def fastall(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastall", *args]


def _error_line(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_tree(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def ref(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "c.h5"
    run_extract(data, out)
    return out


def test_two_ranks_under_torchrun_write_the_single_process_cache(data, tmp_path):
    """Through torchrun itself, shards in --scratch, an unreadable image skipped: skipped tables merge."""
    shutil.copytree(data, tmp_path / "data")
    folder = tmp_path / "data" / "C-NMC_Leukemia" / "training_data" / "fold_0" / "all"
    (folder / "UID_1_99_1_all.bmp").write_bytes(b"BM not really")
    single, out, scratch = tmp_path / "single.h5", tmp_path / "c.h5", tmp_path / "scratch"
    run_extract(tmp_path / "data", single, skip_bad=True)
    scratch.mkdir()
    flags = [*EXTRACT, "--batch-size", "2", "--skip-bad", "--scratch", str(scratch)]
    result = torchrun("extract", str(tmp_path / "data"), "--out", str(out), *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_same_cache(single, out)
    assert len(read_cache(out, load_features=False).skipped) == 1
    assert "x 2 ranks" in result.stdout and result.stdout.count(f"{out}:") == 1  # rank 0 reports, alone
    assert list(scratch.iterdir()) == [] and not (tmp_path / "c.h5.partial").exists()


SUMMARY = """
import dataclasses, json, sys
from fastall.features.extract import extract
from fastall.features.ranks import Share
from fastall.system.distributed import detect
from fastall.system.events import silent
env, reporter = detect(), silent()
share = Share(env) if env is not None else None
summary = extract(sys.argv[1], sys.argv[2], reporter=reporter, share=share, **json.loads(sys.argv[3]))
if env is None or env.is_main:
    fields = dataclasses.asdict(summary)
    print("SUMMARY", json.dumps({**fields, "records": reporter.warnings}, default=str))
"""


def test_ranks_and_one_process_give_the_same_warnings_and_summary(data, tmp_path):
    """Emulated bf16 (the CPU's bf16 capped away), a large --views and a duplicate across classes: the same
    warning records and summary fields from one process and from rank 0 of two."""
    shutil.copytree(data, tmp_path / "data")
    fold = tmp_path / "data" / "C-NMC_Leukemia" / "training_data" / "fold_0"
    first = sorted((fold / "all").iterdir())[0]
    shutil.copy(first, fold / "hem" / "UID_H9_1_1_hem.bmp")
    settings = {"views": 33, "image_size": 32, "weights": "none", "device": "cpu", "workers": 0,
                "backbone": "resnet18", "precision": "bf16", "batch_size": 4}  # fmt: skip
    isa = {"ONEDNN_MAX_CPU_ISA": "AVX2"}

    def summary(output: str) -> dict:
        line = next(line for line in output.splitlines() if line.startswith("SUMMARY "))
        return json.loads(line.removeprefix("SUMMARY "))

    argv = [sys.executable, "-c", SUMMARY, str(tmp_path / "data")]
    one = subprocess.run([*argv, str(tmp_path / "one.h5"), json.dumps(settings)], env=_env(**isa),
                         capture_output=True, text=True, timeout=LIMIT, cwd=ROOT)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    ranks = launch([*argv, str(tmp_path / "two.h5"), json.dumps(settings)], per_rank={0: isa, 1: isa})
    assert [rc for rc, _, _ in ranks] == [0, 0], ranks
    single, rank0 = summary(one.stdout), summary(ranks[0][1])
    assert "SUMMARY" not in ranks[1][1]
    codes = [w["code"] for w in single["records"]]
    assert {"precision", "views", "duplicates"} <= set(codes), single["records"]
    assert rank0["device"] == "cpu x 2 ranks" and single["device"] == "cpu"
    for name in ("path", "seconds", "loop_seconds", "device"):
        single.pop(name), rank0.pop(name)
    assert rank0 == single
    assert single["fills"] and single["precision"]["native"] is False and single["fill"] == "auto"
    assert_same_cache(tmp_path / "one.h5", tmp_path / "two.h5")


def test_a_killed_rank_stops_the_other_and_a_rerun_resumes_to_the_same_cache(data, ref, tmp_path):
    out = tmp_path / "c.h5"
    argv = fastall(
        "extract", str(data), "--out", str(out), *EXTRACT, "--batch-size", "2", "--dist-timeout", "60"
    )
    (rc0, out0, seconds), (rc1, _, _) = launch(argv, per_rank={1: {"FASTALL_TEST_KILL_AT": "shard:2"}})
    assert rc1 == -signal.SIGKILL and rc0 == 1 and seconds < 60
    assert "lost contact with the other ranks" in _error_line(out0) and "rerun" in _error_line(out0)
    base = tmp_path / "c.h5.partial"
    assert sorted(p.name for p in base.iterdir()) == ["rank-0-of-2", "rank-1-of-2"]
    assert len(list((base / "rank-1-of-2").glob("batch-*.npz"))) == 2  # killed after its 2nd shard
    with pytest.raises(CacheError, match="unfinished extract by 2 process"):
        run_extract(data, out)  # one process may not take over the work of two
    results = launch(argv)
    assert [rc for rc, _, _ in results] == [0, 0], results
    assert "resuming:" in results[0][1]
    assert_same_cache(ref, out)
    assert not base.exists()


def test_a_rank_with_no_work(tmp_path):
    data = tmp_path / "one"
    (data / "all").mkdir(parents=True)
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(data / "all" / "p1_0.bmp")
    single, two = tmp_path / "single.h5", tmp_path / "two.h5"
    run_extract(data, single)
    results = launch(fastall("extract", str(data), "--out", str(two), *EXTRACT, "--batch-size", "4"))
    assert [rc for rc, _, _ in results] == [0, 0], results
    assert_same_cache(single, two)


def test_two_ranks_predict_the_single_process_csv(data, ref, tmp_path):
    from fastall.training.train_head import train_head

    run = tmp_path / "run"
    train_head(ref, run, folds=2, test="none", epochs=1, device="cpu", progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.bmp").write_bytes(b"not an image")
    inputs = [str(data), str(bad), str(tmp_path / "missing")]
    options = ["--batch-size", "3", "--tta", "2", "--device", "cpu"]
    single = CliRunner().invoke(
        cli, ["predict", str(run), *inputs, "--out", str(tmp_path / "one.csv"), *options]
    )
    assert single.exit_code == 0, single.output
    results = launch(fastall("predict", str(run), *inputs, "--out", str(tmp_path / "two.csv"), *options))
    assert [rc for rc, _, _ in results] == [0, 0], results
    assert "images ->" in results[0][1] and "images ->" not in results[1][1], results
    for name in ("{}.csv", "{}.skipped.csv"):
        one, two = (tmp_path / name.format(n) for n in ("one", "two"))
        assert one.read_bytes() == two.read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir() if "part" in p.name) == []


GROUP = """
import os, signal, sys
from fastall.errors import FastallError
from fastall.system.distributed import Group, detect
env = detect()
try:
    with Group(env, "cpu", timeout=4) as group:
        group.wait()
        print("joined", group.all_gather(env.rank), flush=True)
        if env.rank == 1 and sys.argv[1] == "fail":
            raise FastallError("rank 1 cannot go on")
        if env.rank == 1 and sys.argv[1] == "hang":
            os.kill(os.getpid(), signal.SIGSTOP)
        group.wait()
except FastallError as err:
    print("Error:", err)
    sys.exit(1)
"""


def test_group_joins_live_ranks_and_stops_when_one_fails():
    results = launch([sys.executable, "-c", GROUP, "fail"])
    assert all("joined [0, 1]" in out for _, out, _ in results)
    assert results[0][0] == 1 and "because rank 1 failed" in _error_line(results[0][1])
    assert results[1][0] == 1 and "rank 1 cannot go on" in _error_line(results[1][1])


def test_group_stops_within_the_timeout_when_a_rank_hangs():
    (rc0, out0, seconds), *_ = launch([sys.executable, "-c", GROUP, "hang"], only_rank0=True)
    assert rc0 == 1 and "did not answer for --dist-timeout 4 s" in _error_line(out0)
    assert seconds < 60


@pytest.mark.parametrize(("n", "world"), [(0, 2), (1, 2), (7, 3), (10661, 8), (5, 5)])
def test_shares_cover_every_item_exactly_once_without_padding(n, world):
    shares = [list(share(n, r, world)) for r in range(world)]
    assert sorted(i for s in shares for i in s) == list(range(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_coverage_problems_are_named():
    good = [{"key": "k", "rows": [0, 2], "bad": {}, "shapes": [[3, 8], [3, 2]]}]
    good.append({"key": "k", "rows": [1], "bad": {3: "unreadable"}, "shapes": [[3, 8], [3, 2]]})
    assert coverage_problem(good, 4, "k") is None
    assert "rank 1 belong to another extract" in coverage_problem([good[0], {**good[1], "key": "x"}], 4, "k")
    assert "different shapes" in coverage_problem([good[0], {**good[1], "shapes": [[3, 9], [3, 2]]}], 4, "k")
    assert "more than one rank" in coverage_problem([good[0], {**good[1], "rows": [1, 2]}], 4, "k")
    assert "in no rank's shards (first: image 3)" in coverage_problem(
        [good[0], {**good[1], "bad": {}}], 4, "k"
    )
    assert "outside" in coverage_problem([good[0], {**good[1], "rows": [1, 7]}], 4, "k")


def test_torchrun_environment_is_detected(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert detect() is None and detect(False) is None
    with pytest.raises(FastallError, match="no torchrun environment"):
        detect(True)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert detect() == DistEnv(1, 2, 1) and detect(False) is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert detect() is None and detect(True) == DistEnv(0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(FastallError, match="RANK=3"):
        detect()


def test_other_world_sizes_are_refused_or_discarded(tmp_path):
    target = tmp_path / "c.h5"
    base = partial_folder(target)
    assert base == tmp_path / "c.h5.partial" and rank_folder(base, 0, 1) == base
    assert rank_folder(base, 1, 4) == base / "rank-1-of-4"
    scratch = partial_folder(target, tmp_path / "local")
    assert scratch.parent == tmp_path / "local" and scratch.name.startswith("c.h5-")
    (base / "rank-0-of-3").mkdir(parents=True)
    (base / "rank-1-of-2").mkdir()
    (base / "meta.json").write_text("{}")
    with pytest.raises(CacheError, match=r"by 1 and 3 process\(es\), this run has 2"):
        claim_layout(base, 2, overwrite=False)
    claim_layout(base, 2, overwrite=True)
    assert [p.name for p in base.iterdir()] == ["rank-1-of-2"]
    with pytest.raises(CacheError, match="by 2 process"):
        claim_layout(base, 1, overwrite=False)
    claim_layout(base, 2, overwrite=False)


def test_ranks_must_agree_before_any_work():
    from fastall.features.ranks import agree as _agree

    same = {"error": None, "key_params": {"views": 8, "dataset_fingerprint": "a"}}
    _agree([same, same], 1)
    other = {"error": None, "key_params": {"views": 8, "dataset_fingerprint": "b"}}
    with pytest.raises(FastallError, match=r"rank 1 would extract something else.*dataset_fingerprint"):
        _agree([same, other], 0)
    with pytest.raises(FastallError, match="^rank 1: no data here$"):
        _agree([same, {"error": "no data here"}], 0)
    with pytest.raises(FastallError, match="^no data here$"):
        _agree([same, {"error": "no data here"}], 1)
