"""Names are identifiers, never paths (RELIABILITY.md rule 4)."""

from __future__ import annotations

import re

from modelserve.errors import InvalidArgumentError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_name(name: str, what: str = "model name") -> str:
    """Return ``name`` if it is a safe identifier, else raise INVALID_ARGUMENT saying why."""
    if not NAME_RE.fullmatch(name) or name in (".", ".."):
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise InvalidArgumentError(
            f"invalid {what} {shown!r}: expected 1-128 characters of [A-Za-z0-9._-] "
            "starting with a letter or digit"
        )
    return name
