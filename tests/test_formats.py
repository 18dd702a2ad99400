"""One format check for every stored kind: a cache, a head file, an exported model."""

from __future__ import annotations

import pytest

from fastall.errors import CacheError, FastallError
from fastall.features.cache import CACHE_FILE
from fastall.inference.artifacts import EXPORT_FILE, HEAD_FILE
from fastall.system.formats import FileFormat


def test_each_problem_is_one_line_naming_the_file():
    fmt = FileFormat("head file", "fastall-head", 2, ("state_dict",), "re-run `fastall train-head`")
    good = {"format": "fastall-head", "format_version": 2, "state_dict": {}}
    fmt.check_record("h.pt", good)
    cases = [
        ([1, 2], "h.pt: not a fastall head file (a list, not a dict)"),
        (
            {**good, "format": "other"},
            "h.pt: not a fastall head file (format 'other', expected 'fastall-head')",
        ),
        ({**good, "format_version": None}, "h.pt: not a fastall head file (no format_version)"),
        (
            {**good, "format_version": 9},
            "h.pt: head file format version 9, this fastall reads version 2: re-run `fastall train-head`",
        ),
        (
            {"format": "fastall-head", "format_version": 2},
            "h.pt: not a complete fastall head file, missing state_dict",
        ),
    ]
    for record, message in cases:
        with pytest.raises(FastallError) as err:
            fmt.check_record("h.pt", record)
        assert str(err.value) == message


def test_the_readers_share_the_check():
    with pytest.raises(CacheError, match="cache schema version 7, this fastall reads version 1"):
        CACHE_FILE.check("c.h5", None, 7, CACHE_FILE.required, error=CacheError)
    with pytest.raises(CacheError, match="missing done"):
        CACHE_FILE.check("c.h5", None, 1, CACHE_FILE.required[:-1], error=CacheError)
    assert HEAD_FILE.name == "fastall-head" and EXPORT_FILE.name == "fastall-model"
