"""Names and keys are matched in full: no trailing newline, NUL, control character, path or
non-ASCII letter slips through (RELIABILITY.md rule 4)."""

from __future__ import annotations

import pytest

from modelserve.errors import InvalidArgumentError
from modelserve.names import validate_name


@pytest.mark.parametrize(
    "name", ["fraud", "a", "model-1.2_x", "9lives", "x" * 128, "model..1", "v1.2.3"]
)
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
        # RELIABILITY-CASES T36's list
        "%2e%2e%2f",  # URL-encoded ../
        "%2e%2e",
        "model/",
        "/etc/passwd",
        "a/../b",
        "a\\b",
        " ..",
        ".. ",
        "x" * 300,
        "fr\u0430ud",  # Cyrillic a, looks like "fraud"
        "\uff46raud",  # fullwidth f
        "fraud\u200b",  # zero-width space
        "fraud\u00a0",  # no-break space
        # Deliberate deviation: "..." is refused (names start with a letter or digit, rule 4).
        "...",
    ],
)
def test_anything_else_is_refused(name: str) -> None:
    with pytest.raises(InvalidArgumentError, match="expected 1-128 characters"):
        validate_name(name)
