"""File safety: the one atomic writer, run folders that survive a kill between their renames, full disks.

The full-disk tests run twice where they can: simulated (a failing ``os.pwrite``, or the
``FASTALL_TEST_ENOSPC_AT`` hook), and on a real tiny tmpfs (needs root; skipped with the reason otherwise).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fastall.errors import FastallError
from fastall.system import faults, files, procs
from fastall.system.runfolder import atomic_folder, check_target
from tests.conftest import INSTALL_ENV_HOOK

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/v0_1"


def _py(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# --- the atomic writer -------------------------------------------------------------------------------------


def test_atomic_write_fsyncs_the_file_then_renames_then_fsyncs_the_folder(tmp_path, monkeypatch):
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: steps.append("fsync file") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: steps.append("rename") or real_replace(a, b))
    monkeypatch.setattr(files, "fsync_dir", lambda folder: steps.append(f"fsync {Path(folder).name}"))
    target = tmp_path / "out.txt"
    files.atomic_write(target, lambda fh: fh.write(b"hello"))
    assert target.read_bytes() == b"hello" and os.listdir(tmp_path) == ["out.txt"]
    assert steps == ["fsync file", "rename", f"fsync {tmp_path.name}"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def half(fh):
        fh.write(b"new, half")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        files.atomic_write(target, half)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_a_full_disk_is_recorded_not_raised_into_the_library_then_raised_once(tmp_path, fault_at):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    fault_at(ENOSPC_AT="text")
    library_saw: list[int] = []

    def library(fh):
        for _ in range(3):
            library_saw.append(fh.write(b"0123456789"))
        fh.seek(0)
        fh.write(b"header")

    with pytest.raises(OSError) as err:
        files.atomic_write(target, library, point="text")
    assert err.value.errno == errno.ENOSPC and library_saw == [10, 10, 10]
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
    fault_at(ENOSPC_AT="another-point")
    files.atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_guarded_file_reads_back_what_it_wrote(tmp_path):
    """h5py's file driver reads and seeks through the same object."""
    import h5py
    import numpy as np

    data = np.arange(5000, dtype=np.float16).reshape(50, 100)

    def write(fh):
        with h5py.File(fh, "w") as f:
            f.create_dataset("x", data=data, chunks=(1, 100))
            f.attrs["note"] = "é" * 1000

    files.atomic_write(tmp_path / "x.h5", write)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert (f["x"][()] == data).all() and f.attrs["note"] == "é" * 1000


def test_hdf5_survives_a_disk_that_fills_at_any_offset():
    """h5py on a file whose writes fail from some offset on: never a segfault (as with HDF5 2.0 when the
    error reaches it, or when it reads back what was never written), always one clean CacheError."""
    code = """
        import errno, os
        from fastall.errors import CacheError
        from tests.test_cache import _write
        real, limit = os.pwrite, [0]

        def fill_up(fd, data, offset):
            if offset + len(data) > limit[0]:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, data, offset)

        os.pwrite = fill_up
        for limit[0] in range(0, 1_700_000, 37_813):
            try:
                _write(%r, n=200, views=8, dim=512)
            except CacheError as err:
                assert str(err).endswith("cannot write cache: no space left on device"), err
            else:
                raise SystemExit(f"written with {limit[0]} bytes")
        print("clean")
    """
    with tempfile.TemporaryDirectory() as tmp:
        proc = _py(code % str(Path(tmp) / "c.h5"))
        assert proc.returncode == 0 and proc.stdout.strip() == "clean", proc.stderr[-2000:]
        assert os.listdir(tmp) == []


def test_torch_save_on_a_full_disk_is_an_oserror_not_torchs_runtimeerror(tmp_path, monkeypatch):
    from fastall.inference.export import atomic_save

    real_pwrite = os.pwrite

    def fill_up(fd, data, offset):
        if offset > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", fill_up)
    blob = {"w": torch.randn(100, 100)}
    with pytest.raises(OSError) as err:
        files.atomic_torch_save(blob, tmp_path / "m.pt")
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(FastallError, match=r"m\.pt: cannot write: no space left on device$"):
        atomic_save(blob, tmp_path / "m.pt")
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    atomic_save(blob, tmp_path / "m.pt")
    assert torch.equal(torch.load(tmp_path / "m.pt", weights_only=True)["w"], blob["w"])


def test_predictions_on_a_full_disk(tmp_path, fault_at):
    from fastall.inference.predict import _atomic_text

    fault_at(ENOSPC_AT="text")
    with pytest.raises(FastallError, match=r"p\.csv: cannot write \(no space left on device\)"):
        _atomic_text(tmp_path / "p.csv", "path,label\n")
    assert os.listdir(tmp_path) == []


def test_a_kill_before_the_rename_keeps_the_old_file_and_the_rerun_sweeps_the_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    code = f"from fastall.system.files import atomic_write_text; atomic_write_text({str(target)!r}, 'new')"
    proc = _py(INSTALL_ENV_HOOK + code, env={faults.KILL_ENV: "text"})
    assert proc.returncode == -9, proc.stderr
    temps = [p for p in os.listdir(tmp_path) if p != "out.txt"]
    assert target.read_text() == "old" and len(temps) == 1 and temps[0].startswith(".out.txt.tmp-")
    assert (tmp_path / temps[0]).read_text() == "new"  # complete and fsynced, but never renamed
    files.atomic_write_text(target, "newer")
    assert target.read_text() == "newer" and os.listdir(tmp_path) == ["out.txt"]


def test_temporaries_of_live_writers_are_left_alone(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".out.txt.tmp-{sleeper.pid}"
        live.write_text("being written")
        files.atomic_write_text(tmp_path / "out.txt", "x")
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_disk_full_recognition():
    assert files.is_disk_full(OSError(errno.ENOSPC, "x")) and files.is_disk_full(OSError(errno.EDQUOT, "x"))
    assert files.is_disk_full(RuntimeError("Driver write request failed (errno = 28, ...)"))
    assert not files.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    torch_says = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 20352 vs 20304")
    assert not files.is_disk_full(torch_says)
    full = files.describe_write_error(OSError(errno.ENOSPC, "No space left on device"))
    assert full == "no space left on device"


def test_process_start_names_one_process():
    me = procs.process_start(os.getpid())
    if me is None:
        pytest.skip("no /proc: start times unknown on this platform")
    before = time.time()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = procs.process_start(sleeper.pid)
        assert me == procs.process_start(os.getpid()) and other not in (None, me)
        assert before - 2 < procs.process_started_at(sleeper.pid) < time.time() + 2
        assert procs.holder_alive(sleeper.pid, other) and not procs.holder_alive(sleeper.pid, me)
        assert procs.holder_alive(sleeper.pid, None, written=before + 60)  # an older lock: mtime after start
        assert not procs.holder_alive(sleeper.pid, None, written=before - 60)  # written before it started
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not procs.holder_alive(sleeper.pid, other) and procs.process_start(sleeper.pid) is None
    assert procs.holder_alive(os.getpid(), me) and not procs.holder_alive(os.getpid(), None)


# --- run folders -------------------------------------------------------------------------------------------


def _run(folder: Path, tag: str) -> None:
    (folder / "metrics.json").write_text(json.dumps({"format": "fastall-run", "tag": tag}))
    (folder / "report").mkdir()
    (folder / "report" / "index.html").write_text(tag)


def _tag(folder: Path) -> str:
    return json.loads((folder / "metrics.json").read_text())["tag"]


def _name(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_a_run_folder_with_a_subfolder_is_fsynced_and_published(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd)
    )
    with atomic_folder(tmp_path / "run") as tmp:
        _run(tmp, "one")
    assert _tag(tmp_path / "run") == "one" and (tmp_path / "run/report/index.html").read_text() == "one"
    assert {Path(p).name for p in synced} >= {"metrics.json", "index.html", "report"}
    assert os.listdir(tmp_path) == ["run"]


def _publish_in_a_child(out: Path, tag: str, kill_at: str) -> subprocess.CompletedProcess:
    code = f"""
        from pathlib import Path
        from fastall.system.runfolder import atomic_folder
        from tests.test_files import _run
        with atomic_folder({str(out)!r}, overwrite=True) as tmp:
            _run(tmp, {tag!r})
    """
    return _py(INSTALL_ENV_HOOK + textwrap.dedent(code), env={faults.KILL_ENV: kill_at})


def test_a_kill_between_the_two_renames_never_loses_the_complete_run(tmp_path):
    out = tmp_path / "run"
    with atomic_folder(out) as tmp:
        _run(tmp, "one")
    proc = _publish_in_a_child(out, "two", "publish-old")
    assert proc.returncode == -9, proc.stderr
    left = sorted(os.listdir(tmp_path))
    assert "run" not in left and len(left) == 2, left  # OUT gone: run.old-PID (one) and run.tmp-PID (two)
    pid = left[0].rsplit("-", 1)[1]
    assert left == [f"run.old-{pid}", f"run.tmp-{pid}"] and _tag(tmp_path / f"run.old-{pid}") == "one"
    with pytest.raises(FastallError, match="a complete fastall-run folder is already there"):
        check_target(out, overwrite=False)  # the rerun first puts the complete copy back
    assert _tag(out) == "one" and (out / "report/index.html").read_text() == "one"
    with atomic_folder(out, overwrite=True) as tmp:
        _run(tmp, "three")
    assert _tag(out) == "three" and os.listdir(tmp_path) == ["run"]


def test_a_kill_after_the_second_rename_keeps_the_new_run(tmp_path):
    out = tmp_path / "run"
    with atomic_folder(out) as tmp:
        _run(tmp, "one")
    proc = _publish_in_a_child(out, "two", "publish-new")
    assert proc.returncode == -9, proc.stderr
    assert _tag(out) == "two" and len(os.listdir(tmp_path)) == 2
    check_target(out, overwrite=True)
    assert _tag(out) == "two"
    with atomic_folder(out, overwrite=True) as tmp:
        _run(tmp, "three")
    assert _tag(out) == "three" and os.listdir(tmp_path) == ["run"]


def test_an_old_copy_is_kept_while_out_is_not_complete(tmp_path):
    """A user's empty folder at OUT must not make the rerun delete the complete copy beside it."""
    out = tmp_path / "run"
    with atomic_folder(out) as tmp:
        _run(tmp, "one")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    os.replace(out, tmp_path / f"run.old-{int(dead.stdout)}")
    out.mkdir()
    with atomic_folder(out) as tmp:
        _run(tmp, "two")
    assert _tag(out) == "two" and _tag(tmp_path / f"run.old-{int(dead.stdout)}") == "one"
    with atomic_folder(out, overwrite=True) as tmp:
        _run(tmp, "three")
    assert os.listdir(tmp_path) == ["run"]


def test_train_head_killed_between_the_renames_then_rerun(tmp_path, one_thread):
    """The real command: the previous run survives a kill at the worst moment, and the rerun recovers it."""
    from click.testing import CliRunner

    from fastall.cli import cli

    out = tmp_path / "run"
    train = ["train-head", str(FIXTURE / "cache.h5"), "--out", str(out), "--folds", "2", "--hidden", "8"]
    train += ["--epochs", "1", "--device", "cpu"]
    assert CliRunner().invoke(cli, train).exit_code == 0
    metrics = (out / "metrics.json").read_text()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", faults.KILL_ENV: "publish-old"}
    cmd = [sys.executable, "-m", "fastall", *train, "--overwrite", "--seed", "1"]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9 and not out.exists(), killed.stderr
    again = CliRunner().invoke(cli, train)
    assert again.exit_code == 1 and "a complete fastall-run folder is already there" in again.output
    assert (out / "metrics.json").read_text() == metrics and (out / "head.pt").is_file()
    assert os.listdir(tmp_path) == ["run"]


def test_a_full_disk_while_the_run_folder_is_written(tmp_path, fault_at):
    fault_at(ENOSPC_AT="run-folder")
    full = r"run: cannot write the output folder: no space left on device$"
    with pytest.raises(FastallError, match=full), atomic_folder(tmp_path / "run") as tmp:
        _run(tmp, "one")
    assert os.listdir(tmp_path) == []


def test_torchs_write_failure_in_a_run_folder_means_a_full_disk_only_if_it_is(tmp_path, monkeypatch):
    torch_error = RuntimeError(
        "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
        "file data/0: file write failed"
    )
    with pytest.raises(RuntimeError, match="file write failed"), atomic_folder(tmp_path / "run"):
        raise torch_error
    monkeypatch.setattr(files, "free_bytes", lambda folder: 4096)
    with pytest.raises(FastallError, match="no space left on device"), atomic_folder(tmp_path / "run"):
        raise torch_error
    assert os.listdir(tmp_path) == []


def test_the_cli_maps_any_full_disk_to_one_line(monkeypatch):
    from click.testing import CliRunner

    from fastall.cli import cli

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/x.csv")

    monkeypatch.setattr("fastall.data.discover.discover", full)
    result = CliRunner().invoke(cli, ["scan", "."])
    assert result.exit_code == 1 and result.output.strip() == "Error: /data/x.csv: no space left on device"


# --- a real small filesystem -------------------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path):
    """A 2 MiB tmpfs (root only), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        mount = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]
        proc = subprocess.run(mount, capture_output=True)
    except OSError as err:
        pytest.skip(f"cannot mount a tmpfs: {err}")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_real_full_disk_cache_write_is_clean(tiny_fs):
    """HDF5 2.0 segfaulted here (exit 139): now the free-space check refuses, and if the disk fills anyway
    the guarded file turns it into one error. Run in a child, so that a segfault fails the test."""
    code = f"""
        import numpy as np
        from fastall.errors import CacheError
        from fastall.features import cache as fc
        from tests.test_cache import _write
        for check in (True, False):
            if not check:
                fc.check_free_space = lambda folder, needed: None
            try:
                _write({str(tiny_fs / "c.h5")!r}, n=200, views=8, dim=2048)
            except CacheError as err:
                print(err)
    """
    proc = _py(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert lines[0].endswith(
        "c.h5: cannot write cache: no space left on device (about 6.4 MiB needed, 2.0 MiB free)"
    )
    assert os.listdir(tiny_fs) == []


def test_real_full_disk_export_and_train_head(tiny_fs):
    from fastall.inference.export import atomic_save
    from fastall.training.train_head import train_head

    with pytest.raises(FastallError, match=r"m\.pt: cannot write: no space left on device$"):
        atomic_save({"w": torch.zeros(1024, 1024)}, tiny_fs / "m.pt")
    with pytest.raises(FastallError, match=r"run: cannot write the output folder: no space left on device"):
        train_head(FIXTURE / "cache.h5", tiny_fs / "run", folds=2, epochs=1, device="cpu", progress=False)
    assert os.listdir(tiny_fs) == []


def test_real_full_disk_extract_keeps_the_shards_and_resumes(tiny_fs, tmp_path, one_thread):
    """Shards fit, the cache does not: one line, no temporary, shards kept; with room, the rerun resumes."""
    from extract_helpers import run_extract, tiny_tree

    from fastall.data.discover import discover
    from fastall.errors import CacheError
    from fastall.features.cache import read_cache

    data = tiny_tree(tmp_path / "data")
    subprocess.run(["mount", "-o", "remount,size=1m", str(tiny_fs)], check=True)
    views = int(0.68 * 2**20 / (len(discover(data).records) * 2048 * 2))  # shards of 0.68 MiB on a 1 MiB disk
    out = tiny_fs / "c.h5"
    with pytest.raises(CacheError) as err:
        run_extract(data, out, views=views)
    message = str(err.value)
    assert "no space left on device" in message and "c.h5.partial is kept" in message and "\n" not in message
    assert sorted(os.listdir(tiny_fs)) == ["c.h5.partial"]
    assert list((tiny_fs / "c.h5.partial").glob("batch-*.npz"))
    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_fs)], check=True)
    summary = run_extract(data, out, views=views)
    assert summary.resumed == summary.images and summary.computed == 0
    assert read_cache(out).n_views == views and sorted(os.listdir(tiny_fs)) == ["c.h5"]
