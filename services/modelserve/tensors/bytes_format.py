"""Triton's BYTES format: each element a little-endian uint32 length, then its bytes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from modelserve.errors import InvalidArgumentError
from modelserve.tensors.datatypes import _LEN, _Where


def _as_bytes(item: object) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    raise TypeError(f"BYTES elements must be bytes or str, got {type(item).__name__}")


def serialize_bytes_tensor(arr: np.ndarray) -> bytes:
    """Each element (C order) as a 4-byte little-endian length and its bytes; str as utf-8."""
    parts: list[bytes] = []
    for item in np.asarray(arr, dtype=np.object_).flat:
        data = _as_bytes(item)
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _bytes_spans(buf: bytes | memoryview, count: int, label: _Where) -> Iterator[tuple[int, int]]:
    """Yield (start, end) of exactly ``count`` elements, then insist the buffer is used up.

    A generator, so validation walks the prefixes in O(1) memory and stops at the first fault.
    """
    size, offset = len(buf), 0
    for i in range(count):
        if offset == size:
            raise InvalidArgumentError(f"{label}: expected {count} BYTES elements, got {i}")
        if size - offset < 4:
            raise InvalidArgumentError(
                f"{label}: BYTES element {i} has a truncated length prefix: "
                f"needs 4 bytes at offset {offset}, got {size - offset}"
            )
        (length,) = _LEN.unpack_from(buf, offset)
        start, end = offset + 4, offset + 4 + length
        if end > size:
            raise InvalidArgumentError(
                f"{label}: BYTES element {i} is truncated: "
                f"needs {length} bytes at offset {start}, got {size - start}"
            )
        yield start, end
        offset = end
    rest = size - offset
    if rest == 0:
        return
    # A complete element after the last one is a count mismatch; anything else is garbage.
    if rest >= 4 and _LEN.unpack_from(buf, offset)[0] <= rest - 4:
        raise InvalidArgumentError(
            f"{label}: expected {count} BYTES elements, got more than {count}"
        )
    raise InvalidArgumentError(
        f"{label}: expected {count} BYTES elements, got {rest} trailing bytes after them"
    )


def deserialize_bytes_tensor(
    buf: bytes | memoryview, count: int, name: str, *, kind: str = "input"
) -> np.ndarray:
    """Parse ``count`` length-prefixed elements into a flat object array of ``bytes``."""
    # A list grows only as far as the buffer really holds, so a lying count allocates nothing.
    items = [bytes(buf[s:e]) for s, e in _bytes_spans(buf, count, _Where(kind, name))]
    out = np.empty(len(items), dtype=np.object_)
    out[:] = items
    return out
