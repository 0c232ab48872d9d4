"""Names and keys are matched in full: no trailing newline, NUL, control character, path or
non-ASCII letter slips through (RELIABILITY.md rule 4)."""

from __future__ import annotations

import pytest

from modelserve.errors import InvalidArgumentError
from modelserve.names import validate_name


@pytest.mark.parametrize("name", ["fraud", "a", "model-1.2_x", "9lives", "x" * 128])
def test_identifiers_pass(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "fault_nl\n",  # a trailing newline matched `$` with re.match
        "fault\r",
        "nul\x00",
        "tab\tname",
        "\nleading",
        "..",
        ".",
        "../etc",
        "a/b",
        "",
        "-dash-first",
        "x" * 129,
        "ünïcode",
        "space name",
    ],
)
def test_anything_else_is_refused(name: str) -> None:
    with pytest.raises(InvalidArgumentError, match="expected 1-128 characters"):
        validate_name(name)
