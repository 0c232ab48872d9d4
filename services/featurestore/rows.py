"""One entity's row as ONE binary value: event time plus every feature's value bytes.

Layout (all little-endian), version 1:

    u8  format version (1)
    i64 event time, unix ms          <- at byte offset 1: the Redis write script reads it
    u16 feature count
    per feature: u8 name length, name (ASCII), u32 value length, value bytes (values.py)

Features are stored by name, so rows written before a feature was added to the view still
decode (the new feature is simply absent: MISSING for that entity). No pickle, no JSON: the
format is small, explicit and cheap to parse.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

FORMAT_VERSION = 1
EVENT_OFFSET = 1  # byte offset of the i64 event time; the Redis Lua script depends on it
MAX_EVENT_MS = 2**53 - 1  # Redis Lua compares event times as doubles: stay exact

_HEAD = struct.Struct("<BqH")
_NAME_LEN = struct.Struct("<B")
_VALUE_LEN = struct.Struct("<I")


class CorruptRowError(ValueError):
    """A stored value is not a row this code wrote (data problem, surfaced as INTERNAL)."""


def encode_row(event_ms: int, values: Sequence[tuple[str, bytes]]) -> bytes:
    """Encode one entity's row: ``values`` are (feature name, value bytes) pairs."""
    parts = [_HEAD.pack(FORMAT_VERSION, event_ms, len(values))]
    for name, value in values:
        raw_name = name.encode("ascii")
        parts.append(_NAME_LEN.pack(len(raw_name)))
        parts.append(raw_name)
        parts.append(_VALUE_LEN.pack(len(value)))
        parts.append(value)
    return b"".join(parts)


def row_event_ms(blob: bytes) -> int:
    """The event time of an encoded row, without decoding its values."""
    _check_head(blob)
    _, event_ms, _ = _HEAD.unpack_from(blob)
    return int(event_ms)


def decode_row(blob: bytes, wanted: frozenset[bytes] | None = None) -> tuple[int, dict[str, bytes]]:
    """(event time, feature name -> value bytes) of an encoded row.

    ``wanted`` (ASCII names) limits which values are copied out: a lookup of 2 features of a
    wide view skips the rest without decoding their names. This is the lookup's hot loop.
    """
    _check_head(blob)
    _, event_ms, count = _HEAD.unpack_from(blob)
    values: dict[str, bytes] = {}
    pos = _HEAD.size
    unpack_len = _VALUE_LEN.unpack_from
    try:
        for _ in range(count):
            name_end = pos + 1 + blob[pos]
            name = blob[pos + 1 : name_end]
            (value_len,) = unpack_len(blob, name_end)
            pos = name_end + 4 + value_len
            if wanted is None or name in wanted:
                values[name.decode("ascii")] = blob[name_end + 4 : pos]
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise CorruptRowError(f"row is truncated or garbled: {exc}") from None
    if pos != len(blob):
        raise CorruptRowError(f"row is {len(blob)} bytes but its values end at {pos}")
    return int(event_ms), values


def _check_head(blob: bytes) -> None:
    if len(blob) < _HEAD.size or blob[0] != FORMAT_VERSION:
        raise CorruptRowError(
            f"not a version-{FORMAT_VERSION} feature row ({len(blob)} bytes, "
            f"first byte {blob[:1]!r})"
        )
