"""``-o json|table`` for the CLI's read commands: a table for people, JSON (the RPC answer as
protobuf's JSON mapping, field names as in the .proto) for scripts. The flag itself is one of
the global options (modelserve.cli.options)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message


def emit(fmt: str, answer: Message, table: Callable[[], str]) -> None:
    """Print ``answer`` as JSON when ``fmt`` is json, else ``table()``."""
    if fmt == "json":
        print_json(as_json(answer))
    else:
        print(table())


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def as_json(answer: Message) -> dict[str, Any]:
    return MessageToDict(answer, preserving_proto_field_name=True)
