"""The online store interface: encoded rows in, encoded rows out, newest event wins.

Backends know nothing about features or tensors: they keep one opaque row (rows.py) per
(view, entity) and guarantee two things: a write batch lands whole or not at all, and a row
never replaces one with a newer event time (equal times: the later write wins, so a
correction can be re-sent). Decoding and TTL semantics live in ``online.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One entity's row, ready to store: its canonical key, event time and encoded bytes."""

    entity: str
    event_ms: int
    blob: bytes


class OnlineStore(Protocol):
    async def write_rows(self, view: str, rows: Sequence[StoredRow], *, ttl_seconds: int) -> int:
        """Store ``rows`` (distinct entities) as one atomic batch; return how many were stored
        (rows older than the stored one are skipped). ``ttl_seconds`` lets a backend expire
        keys for memory hygiene, always long after the values would read as EXPIRED."""
        ...

    async def read_rows(self, view: str, entities: Sequence[str]) -> list[bytes | None]:
        """The stored row per entity, in order; None where there is none."""
        ...

    async def delete_view(self, view: str) -> int:
        """Remove every row of ``view``; return how many there were."""
        ...

    async def close(self) -> None: ...
