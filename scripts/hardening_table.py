"""Regenerate docs/hardening.md from a real run of the bad-input corpus (tests/bad_inputs.py).

python scripts/hardening_table.py
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastall.cli import cli  # noqa: E402
from tests.bad_inputs import CASES, Env  # noqa: E402
from tests.test_hardening import build_env  # noqa: E402

OTHER = """
## Crashes, concurrency and caches

| situation | what happens |
|---|---|
| `extract` killed (SIGKILL, power loss) at any moment | finished batches are kept as fsynced shards in `CACHE.h5.partial/`; the next run resumes and the final cache is identical to an uninterrupted one (tested at the first shard, mid-shard, during the HDF5 write and before cleanup) |
| a partial cache | `CACHE.h5` is written as `.CACHE.h5.tmp-<pid>`, fsynced and renamed only when complete, then its folder is fsynced (every file fastall writes goes this way: `fastall/system/files.py`); a reader never mistakes partial work for a cache |
| two `extract` runs on one cache | the second is refused, naming `CACHE.h5.lock` and the pid holding it; the lock records the holder's start time, so a lock whose process is gone, or whose pid now names another process (this one, pid 1, after a restart), is taken over with a warning |
| Ctrl-C in `train-head` or `sweep` | the run folder is built as `OUT.tmp-<pid>` and renamed when complete; nothing that looks complete is left |
| a kill while `--overwrite` replaces a run folder | the old folder is moved to `OUT.old-<pid>` before the new one is renamed onto OUT; a kill between the two renames leaves no OUT, and the next run first puts the complete old folder back (tested by killing at both steps) |
| read-only output folder, full disk | one-line error naming the path (`no space left on device`); no partial file at the target; the cache's free space is checked before it is written, and a disk that fills anyway never reaches HDF5 or torch as an I/O error (tested on a real 2 MiB tmpfs where the platform allows mounting one) |
| a cache made with other settings (`extract` again) | refused, naming each differing parameter (`--overwrite` replaces it) |
| loading | `torch.load(weights_only=True)` everywhere; nothing is ever unpickled; caches are validated (schema version, shapes, dtypes, key) before use |
| CSV formula injection (a class, patient or file named `=HYPERLINK(...)`, `@SUM(1+1)`, `+x`, `-x`) | every CSV fastall writes goes through one writer, `fastall/system/csvsafe.py`: a text cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return (or `'`) gets a leading `'`, so spreadsheets show it as text; numbers such as `-0.25` are left alone, and fastall's own readers strip the `'` again, so nothing is lost |
| names read from files used as paths (a cache's backbone `/tmp/x` or `../../y`, classes, patients) | mapped to a safe token first (`fastall/system/names.py`: a plain name stays, anything else becomes its safe characters plus 8 hex digits of its sha256): `compare` writes only under `--out` |
| outputs that would replace inputs | `--out` of predict/export is refused when it is an input, lies inside a fastall run, sweep, evaluate, explain or compare folder, or is an HDF5 cache; `--overwrite` replaces only a folder of the same kind (an evaluate output by an evaluate), checked before any work |
| SIGTERM | ends like Ctrl-C: one line saying what was kept, exit 143 |
| `extract` under torchrun: a rank killed (SIGKILL) or crashed | the other ranks stop at once with one line (`lost contact with the other ranks ...; rerun the same command to resume`); a hung rank is given up after `--dist-timeout` seconds; every rank's finished shards are kept in `CACHE.h5.partial/rank-R-of-W/` and a rerun resumes to the same cache, bit for bit (tests/test_distributed.py) |
| `extract` under torchrun: one rank fails (bad image without `--skip-bad`, full disk) | it prints its error; the others stop within a heartbeat (`stopping because rank R failed`) |
| a rerun with another number of processes (torchrun ↔ plain, or another `--nproc_per_node`) | refused: `... holds an unfinished extract by 2 process(es), this run has 1: rerun with the same number ... or use --overwrite` |
| ranks that see different data or settings | refused before any work, naming each differing key parameter |
| shards that do not cover every image exactly once, or carry another key or shape | every rank refuses with the same message; nothing is written |
"""


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "env"
        base.mkdir()
        env = build_env(base)
        for i, case in enumerate(CASES):
            work = Path(tmp) / f"case{i}"
            work.mkdir()
            argv = case.build(Env(env.data, env.cache, env.run, work))
            result = CliRunner(env={"COLUMNS": "400", **dict(case.env)}).invoke(cli, argv)
            errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
            shown = [line for line in result.output.splitlines() if case.show and case.show in line]
            if shown:
                seen = shown[0].strip()
            elif case.expect == "ok":
                seen = "accepted (converted where needed), one prediction row"
            elif errors:
                seen = errors[0]
            elif notes := [line for line in result.output.splitlines() if line.startswith("note:")]:
                seen = " / ".join(notes) + " (exit 0: everything else is made)"
            else:
                seen = "listed in the problems table, naming the file; the other images are used"
            seen = re.sub(r"…/(case\d+|env)/", "…/", seen.replace(tmp, "…")).replace("|", "\\|")
            rows.append(
                f"| {case.category} | {case.name} | `fastall {argv[0]}` | {result.exit_code} | {seen} |"
            )
    text = (
        "# What every bad input gives\n\nGenerated by `python scripts/hardening_table.py` from a real run of the "
        "corpus in `tests/bad_inputs.py` (tested by `tests/test_hardening.py`). Paths are shortened to `…/`.\n"
        "No case shows a traceback (`FASTALL_DEBUG=1` shows one for bug reports). `extract --skip-bad` and "
        "`predict --skip-bad` (the default for predict) skip unreadable images instead and list them.\n\n"
        "| kind | input | command | exit | what the user sees |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
        + OTHER
    )
    (ROOT / "docs" / "hardening.md").write_text(text)
    print(f"wrote docs/hardening.md ({len(rows)} cases)")


if __name__ == "__main__":
    main()
