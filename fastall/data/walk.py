"""The one directory walker, used by dataset discovery and by `predict`'s file finder.

Sorted, depth first; hidden entries (names starting with ``.``) are skipped, files and folders alike;
symlinked folders are followed once (a folder reached twice is a loop); anything that is neither a regular
file nor a folder (broken symlink, symlink loop, socket, device) is reported as a problem, never yielded.

Symlinks follow one rule, for files and folders alike: with a fence (``inside``; discovery fences each class
folder), a symlink whose target lies outside the fence is reported ("... outside ...: not followed") and
never followed, so no link can pull in files from elsewhere or give an image a second label. Without a fence
(``predict``'s inputs), symlinks are followed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from fastall.system.files import file_kind
from fastall.system.names import shown, undecodable

IMAGE_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")

OnProblem = Callable[[str, str], None]
NOT_UTF8 = "file name is not valid UTF-8 and cannot be recorded: rename it (e.g. convmv -f latin1 -t utf8)"


def walk_files(
    top: str | Path,
    on_problem: OnProblem,
    *,
    suffixes: tuple[str, ...] | None = None,
    inside: str | Path | None = None,
) -> Iterator[Path]:
    """Regular files under ``top`` (only names ending in ``suffixes``, any case, when given).

    ``on_problem(path, message)`` hears of every unreadable folder, loop and non-regular entry. With
    ``inside``, a symlink (file or folder) whose target is outside ``inside`` is reported and not followed
    (a link to /usr or to another class folder must not relabel files).
    """
    fence = Path(os.path.realpath(inside)) if inside is not None else None
    seen: set[tuple[int, int]] = set()
    stack = [Path(top)]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen:
                on_problem(str(folder), "folder reached twice (symlink loop?)")
                continue
            seen.add(key)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            on_problem(str(folder), f"cannot read folder ({err.strerror or err})")
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if undecodable(entry.name):
                on_problem(shown(entry.path), NOT_UTF8)
                continue
            try:
                if entry.is_dir():
                    target = Path(os.path.realpath(entry.path)) if entry.is_symlink() else None
                    if fence is not None and target is not None and not target.is_relative_to(fence):
                        on_problem(entry.path, f"folder symlink to {target}, outside {fence}: not followed")
                        continue
                    subdirs.append(Path(entry.path))
                    continue
                if suffixes is not None and not entry.name.lower().endswith(suffixes):
                    continue
                if entry.is_file():
                    target = Path(os.path.realpath(entry.path)) if entry.is_symlink() else None
                    if fence is not None and target is not None and not target.is_relative_to(fence):
                        on_problem(entry.path, f"file symlink to {target}, outside {fence}: not followed")
                        continue
                    yield Path(entry.path)
                    continue
            except OSError:
                pass
            on_problem(entry.path, _not_regular(entry.path))
        stack.extend(reversed(subdirs))


def _not_regular(path: str) -> str:
    kind = file_kind(path) or "not a regular file"
    if kind.startswith(("a broken symlink", "a symlink loop", "unreadable")):
        return kind.removeprefix("a ")
    return f"special file: {kind}, not a regular file or folder"


def find_images(inputs: Iterable[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given plus image files found under folders (recursively, sorted, no duplicates).

    Returns ``(paths, problems)``; problems are missing inputs, unreadable folders and entries that are not
    regular files, as ``(path, reason)``.
    """
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            found.append(path)

    def report(path: str, message: str) -> None:
        problems.append((path, message))

    for raw in inputs:
        top = Path(raw)
        if undecodable(top):
            problems.append((shown(top), NOT_UTF8))
        elif top.is_dir():
            for path in walk_files(top, report, suffixes=IMAGE_EXTENSIONS):
                add(path)
        elif top.is_file():
            add(top)
        elif os.path.lexists(top):
            problems.append((str(top), _not_regular(str(top))))
        else:
            problems.append((str(top), "no such file or folder"))
    return found, problems
