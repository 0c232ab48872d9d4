"""``-o json|table`` for the CLI's read commands: a table for people, JSON (the RPC answer as
protobuf's JSON mapping, field names as in the .proto) for scripts."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message


def add_output_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default="table",
        help="table (default) or json (the answer in protobuf's JSON mapping)",
    )


def emit(args: argparse.Namespace, answer: Message, table: Callable[[], str]) -> None:
    """Print ``answer`` as JSON when asked, else ``table()``."""
    if getattr(args, "output", "table") == "json":
        print(json.dumps(as_json(answer), indent=2, sort_keys=True))
    else:
        print(table())


def as_json(answer: Message) -> dict[str, Any]:
    return MessageToDict(answer, preserving_proto_field_name=True)
