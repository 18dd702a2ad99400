"""Names that come from files (a cache's backbone, a class, a patient, a weights name) made safe to use as
one path component, and file names that cannot be recorded as text.

A name read from a cache or a folder is data, possibly hostile: ``/tmp/x`` or ``../../y`` as a backbone name
once made ``compare`` write outside ``--out``. :func:`safe_token` keeps a plain name as it is and maps any
other to a token that cannot leave its folder (its safe characters and a short hash of the original, so two
different names never meet).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from fastall.errors import FastallError

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,79}")


def safe_token(name: str) -> str:
    """``name`` itself when it is a plain component (letters, digits, ``._+-``, at most 80, not starting
    with a dot), otherwise its safe characters and 8 hex digits of its sha256: never a path separator, ``..``
    or an absolute path."""
    text = str(name)
    if _PLAIN.fullmatch(text) and ".." not in text:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    kept = re.sub(r"[^A-Za-z0-9_+-]+", "_", text).strip("_")[:40]
    return f"{kept}-{digest}" if kept else f"name-{digest}"


def undecodable(path: str | Path) -> bool:
    """True for a file name that is not valid UTF-8 (Python holds its bytes as surrogate escapes)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def shown(path: str | Path) -> str:
    """A file name printable in one line whatever its bytes (undecodable ones as ``\\xe9``)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def refuse_undecodable(paths: list[Path], what: str = "image") -> None:
    """Refuse, before any work, file names that are not valid UTF-8: they cannot be written to the CSV,
    cache or report that records them."""
    bad = [p for p in paths if undecodable(p)]
    if bad:
        raise FastallError(
            f"{shown(bad[0])}: {len(bad)} {what} file name(s) are not valid UTF-8 and cannot be recorded; "
            "rename them (e.g. convmv -f latin1 -t utf8) and run again"
        )
