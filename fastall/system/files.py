"""File safety: every file fastall writes appears whole or not at all, with one guarantee for every writer.

A file is written to a temporary name in its own folder (``.NAME.tmp-PID``), fsynced, renamed onto NAME, and
the folder is fsynced. The writing library (h5py, torch, numpy) sees a file object that never raises on a
failed write: the first error (a full disk) is recorded and raised once the library is done, so it ends as one
clean ``OSError``, never as a crash inside HDF5. Between the steps, ``fastall.system.faults`` names the
durable step (where a fault test kills, pauses or fills the disk).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from fastall.system import faults
from fastall.system.procs import pid_alive

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (a no-op where folders cannot be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """fsync every file and folder under ``folder`` (symlinks are left alone)."""
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


class _GuardedFile(io.RawIOBase):
    """The temporary file as a writing library sees it: a failed write is recorded, never raised.

    HDF5 2.0 segfaults when a write fails mid-file, and torch hides the errno. So after the first failure the
    file carries on in memory (what was written so far is read back, the disk copy is emptied), the library
    finishes on a consistent file, and :func:`atomic_write` raises the recorded ``OSError``.
    """

    def __init__(self, fd: int, point: str) -> None:
        super().__init__()
        self.fd, self.pos, self.size = fd, 0, 0
        self.error: OSError | None = None
        self.memory: bytearray | None = None
        if faults.disk_full(point):
            self._fail(_disk_full())

    def _fail(self, err: OSError) -> None:
        self.error = err
        try:
            self.memory = bytearray(os.pread(self.fd, self.size, 0).ljust(self.size, b"\0"))
            os.ftruncate(self.fd, 0)
        except OSError:
            self.memory = self.memory if self.memory is not None else bytearray(self.size)

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.pos = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence] + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.memory is None:
            data = os.pread(self.fd, len(view), self.pos)
        else:
            data = self.memory[self.pos : self.pos + len(view)]
        view[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.memory is None:
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self.fd, view[done:], self.pos + done)
            except OSError as err:
                self._fail(err)
        if self.memory is not None:
            if len(self.memory) < self.pos:
                self.memory.extend(bytes(self.pos - len(self.memory)))
            self.memory[self.pos : self.pos + len(view)] = view
        self.pos += len(view)
        self.size = max(self.size, self.pos)
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.memory is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as err:
                self._fail(err)
        if self.memory is not None:
            del self.memory[size:]
            self.memory.extend(bytes(size - len(self.memory)))
        self.size = size
        return size


def temp_path(path: Path) -> Path:
    """The temporary name of ``path`` while this process writes it: ``.NAME.tmp-PID`` beside it."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_temps(path: Path) -> None:
    """Delete the temporary files of ``path`` left by processes that are gone (a kill, a power loss)."""
    pattern = re.compile(re.escape(f".{path.name}.tmp-") + r"(\d+)")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for sibling in siblings:
        m = pattern.fullmatch(sibling.name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                sibling.unlink()


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], *, point: str = "write") -> Path:
    """Write ``path`` whole or not at all: ``write(fileobj)`` into a temporary file in the same folder,
    fsync it, rename it onto ``path``, fsync the folder.

    Raises the first failed write's ``OSError`` (ENOSPC on a full disk) and leaves no temporary file;
    ``point`` names the step for the test hooks (kill before the rename, simulated full disk).
    """
    path = Path(path)
    remove_stale_temps(path)
    tmp = temp_path(path)
    guard = None
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            guard = _GuardedFile(fd, point)
            write(guard)
            if guard.error is not None:
                raise guard.error
            os.fsync(fd)
        finally:
            os.close(fd)
        faults.reached(point)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if guard is not None and guard.error is not None and isinstance(err, Exception):
            raise guard.error from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str, *, point: str = "text") -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data), point=point)


def atomic_torch_save(obj: Any, path: str | Path, *, point: str = "torch-save") -> Path:
    """:func:`atomic_write` of ``torch.save(obj)``: a full disk is an OSError, not torch's RuntimeError."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh), point=point)


def free_bytes(folder: str | Path) -> int | None:
    """Bytes free for this user in ``folder``'s filesystem; None where that cannot be told."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def check_free_space(folder: str | Path, needed: int) -> None:
    """Raise ENOSPC up front when ``folder`` has less than ``needed`` bytes free."""
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise OSError(
            errno.ENOSPC,
            f"{os.strerror(errno.ENOSPC)}: about {_mib(needed)} needed, {_mib(free)} free",
            str(folder),
        )


def is_disk_full(err: BaseException, folder: str | Path | None = None) -> bool:
    """Whether ``err`` means a full disk: ENOSPC/EDQUOT, those words in a library's message, or (given the
    ``folder`` being written) any failure while that folder's disk has less than 1 MiB free: torch, for one,
    says only "unexpected pos" or "iostream error"."""
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in DISK_FULL_ERRNOS
    text = str(err)
    if any(s in text for s in ("No space left on device", "Disk quota exceeded", "errno = 28")):
        return True
    free = free_bytes(folder) if folder is not None else None
    return free is not None and free < 1 << 20


def describe_write_error(err: BaseException, folder: str | Path | None = None) -> str:
    """The reason a write failed, in a few words: ``no space left on device`` for a full disk."""
    if is_disk_full(err, folder):
        detail = err.strerror if isinstance(err, OSError) and err.strerror else ""
        return "no space left on device" + (f" ({detail.split(': ', 1)[1]})" if ": " in detail else "")
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def kind_of_mode(mode: int) -> str | None:
    """None for a regular file, else what ``mode`` (an ``st_mode``) is, in words: "a named pipe (FIFO)"."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def file_kind(path: str | Path) -> str | None:
    """None when ``path`` is a regular file (after symlinks); else what it is, in a few words: "no such
    file", "a folder", "a named pipe (FIFO)", "a broken symlink (target missing)", "a symlink loop"...
    Never opens ``path``, so a FIFO or a device cannot block."""
    try:
        return kind_of_mode(os.stat(path).st_mode)
    except FileNotFoundError:
        return "a broken symlink (target missing)" if os.path.islink(path) else "no such file"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop"
        return f"unreadable ({err.strerror or err})"


def open_regular(path: str | Path) -> BinaryIO:
    """Open a regular file for reading without ever blocking: a FIFO, socket or device is refused with an
    ``OSError`` whose ``strerror`` says what it is (``open()`` on a FIFO waits forever for a writer)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        kind = kind_of_mode(os.fstat(fd).st_mode)
        if kind is not None:
            raise OSError(errno.EINVAL, f"{kind}, not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_regular_text(path: str | Path) -> io.TextIOWrapper:
    """:func:`open_regular` as UTF-8 text for the csv module (``newline=""``): never blocks on a FIFO."""
    return io.TextIOWrapper(open_regular(path), encoding="utf-8", newline="")
