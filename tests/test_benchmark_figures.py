"""Every figure the README ties to a benchmark JSON is in that JSON, and every JSON is accounted for.

The convention (benchmarks/README.md, "How a README figure names its JSON"): a measured figure is followed at
once by ``<!-- fig FILE KEY [SCALE] -->``, e.g. ``**12.0 ms**<!-- fig inference_cpu_native.json
chosen.end_to_end_p50_ms -->``. FILE is under benchmarks/results/; KEY is a dotted path (``[i]`` an index,
``[name=value]`` the list element whose ``name`` is ``value``, ``[*]`` every element, with ``min:`` or
``max:`` before the path to take the least or greatest); SCALE is ``*N`` or ``/N``. The figure is the last
number before the tag; the JSON value times SCALE must round to it at the decimals shown.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]
TAG = re.compile(r"<!--\s*fig\s+(\S+)\s+(\S+)(?:\s+([*/][\d.e+]+))?\s*-->")
NUMBER = re.compile(r"(-?\d[\d,]*(?:\.\d+)?)\s*(?:k|ms|s|×|%|GiB|GB|MB|M)?[*)\s]*$")
UNIT_FIGURE = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?\s*(?:ms|s|×|%|GiB|GB)(?![\w])")
GOAL_COLUMNS = ("goal", "target", "what", "baseline", "backbone")


def lookup(data, key: str):
    """The value at ``key`` (the path language above), or a list of values where ``[*]`` appears."""
    aggregate = None
    if key.startswith(("min:", "max:")):
        aggregate, key = key[:3], key[4:]
    values = [data]
    for part in re.findall(r"[^.\[\]]+|\[[^\]]*\]", key):
        nxt = []
        for v in values:
            if part == "[*]":
                nxt.extend(v.values() if isinstance(v, dict) else v)
            elif part.startswith("[") and "=" in part:
                name, _, want = part[1:-1].partition("=")
                nxt.append(next(e for e in v if str(e.get(name)) == want))
            elif part.startswith("["):
                nxt.append(v[int(part[1:-1])])
            else:
                nxt.append(v[part])
        values = nxt
    if aggregate:
        return {"min": min, "max": max}[aggregate](values)
    assert len(values) == 1, f"{key}: [*] needs min: or max:"
    return values[0]


def tags(text: str) -> list[tuple[str, str, str, str | None, int]]:
    """(shown figure, file, key, scale, line number) of every tag in ``text``."""
    out = []
    for match in TAG.finditer(text):
        before = TAG.sub("", text[max(0, match.start() - 200) : match.start()])
        number = NUMBER.search(before)
        line = text.count("\n", 0, match.start()) + 1
        out.append((number.group(1) if number else "", *match.groups(), line))
    return out


def check_tag(shown: str, file: str, key: str, scale: str | None) -> str | None:
    """None when the JSON holds the figure, else why not."""
    path = RESULTS / file
    if not shown:
        return "no figure right before the tag"
    if not path.is_file():
        return f"{file} is not in benchmarks/results"
    try:
        value = float(lookup(json.loads(path.read_text()), key))
    except (KeyError, IndexError, StopIteration, TypeError, ValueError) as err:
        return f"{file} has no {key} ({type(err).__name__}: {err})"
    if scale:
        value = value * float(scale[1:]) if scale[0] == "*" else value / float(scale[1:])
    figure = float(shown.replace(",", ""))
    decimals = len(shown.partition(".")[2])
    if not math.isfinite(value) or abs(value - figure) > 0.5 * 10**-decimals + 1e-9:
        return f"{file} {key} is {value:.6g}, the text says {shown}"
    return None


def _all_tags() -> list:
    found = []
    for doc in DOCS:
        name = doc.relative_to(ROOT)
        for shown, file, key, scale, line in tags(doc.read_text(encoding="utf-8")):
            found.append(pytest.param(shown, file, key, scale, id=f"{name}:{line}:{shown}"))
    return found


@pytest.mark.parametrize(("shown", "file", "key", "scale"), _all_tags())
def test_each_tagged_figure_is_in_its_json(shown, file, key, scale):
    assert check_tag(shown, file, key, scale) is None, check_tag(shown, file, key, scale)


def test_the_checker_refuses_a_figure_its_json_does_not_hold():
    """A figure off by one in its last digit, a key the JSON lacks, and a file that does not exist."""
    ok = "<!-- fig cv_speed_cuda.json a_full_cv.wall_s -->"
    assert [t[0] for t in tags(f"**2.16 s**{ok}")] == ["2.16"]
    assert check_tag("2.16", "cv_speed_cuda.json", "a_full_cv.wall_s", None) is None
    assert "the text says 2.17" in check_tag("2.17", "cv_speed_cuda.json", "a_full_cv.wall_s", None)
    assert "has no" in check_tag("2.16", "cv_speed_cuda.json", "a_full_cv.wall", None)
    assert "not in benchmarks/results" in check_tag("2.16", "cv_speed_gpu.json", "a_full_cv.wall_s", None)
    assert check_tag("1,666", "cv_speed_cuda.json", "a_full_cv.vs_paper_60_min", None) is None
    assert check_tag("99.7", "inference_cpu_native.json", "chosen.agreement_vs_fp32", "*100") is None
    assert check_tag("-0.004", "head_vs_probe_cpu.json", "min:runs[*].head_minus_probe", None) is None
    key = "backbones[backbone=resnet18].latency_vs_baseline"
    assert check_tag("0.42", "backbones_cpu.json", key, None) is None


def test_the_readme_names_only_tagged_figures_in_its_benchmark_tables():
    """In a README table that holds a tag, every time, ratio or percentage outside the goal, target and
    baseline columns carries a tag: an untagged number there would be a figure no test checks."""
    untagged = []
    for table in _tables((ROOT / "README.md").read_text(encoding="utf-8")):
        if not any(TAG.search(row) for row in table):
            continue
        header = [c.strip().lower() for c in table[0].strip("|").split("|")]
        for row in table[2:]:
            cells = row.strip().strip("|").split("|")
            for name, cell in zip(header, cells, strict=False):
                if name.startswith(GOAL_COLUMNS):
                    continue
                bare = re.sub(r"\(`[^`]*`\)|`[^`]*`", "", cell)
                pieces = re.split(r"<!--.*?-->", bare)
                for i, piece in enumerate(pieces):
                    found = list(UNIT_FIGURE.finditer(piece))
                    loose = found if i == len(pieces) - 1 else found[:-1]  # the last one before a tag is its
                    untagged += [f"{m.group(0)!r} in {row[:70]!r}" for m in loose]
    assert not untagged, "\n".join(untagged)


def _tables(text: str) -> list[list[str]]:
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def test_benchmarks_readme_lists_every_json_with_its_command():
    """Every JSON under benchmarks/results has a row in benchmarks/README.md naming its command, and every
    JSON a README figure names is one of them."""
    listing = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([^`]+\.json)` \|.*$", listing, re.M)}
    files = sorted(str(p.relative_to(RESULTS)) for p in RESULTS.rglob("*.json"))
    assert sorted(rows) == files
    for name, row in rows.items():
        assert "benchmarks/" in row or "kept" in row, f"{name}: no command"
    named = {file for _, file, _, _, _ in tags((ROOT / "README.md").read_text(encoding="utf-8"))}
    assert named <= set(rows)
    for name in named:
        assert "README" in rows[name], f"{name} feeds the README, its row says not which figure"
