"""The default online store: rows in a SQLite table, one transaction per write batch."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from featurestore.online_store import StoredRow
from featurestore.sqlite_thread import SqliteThread
from modelserve.storage import write_transaction

# SQLite's bound-variable limit is 32766 on current builds; stay far below it per statement.
_READ_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_rows (
    view TEXT NOT NULL,
    entity TEXT NOT NULL,
    event_unix_ms INTEGER NOT NULL,
    row BLOB NOT NULL,
    PRIMARY KEY (view, entity)
) WITHOUT ROWID
"""

# The WHERE makes "newest event wins" part of the statement, so no read-then-write race.
_UPSERT = (
    "INSERT INTO online_rows (view, entity, event_unix_ms, row) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(view, entity) DO UPDATE SET "
    "event_unix_ms = excluded.event_unix_ms, row = excluded.row "
    "WHERE excluded.event_unix_ms >= online_rows.event_unix_ms"
)


class SqliteOnlineStore:
    """Online rows in SQLite. Build with ``await SqliteOnlineStore.open(path)``; the file may
    be the catalog's (data_dir/featurestore.sqlite3): WAL lets both share it."""

    def __init__(self, db: SqliteThread) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> SqliteOnlineStore:
        db = await SqliteThread.open(path, "fs-online")
        await db.run(lambda conn: conn.execute(_SCHEMA))
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    async def write_rows(self, view: str, rows: Sequence[StoredRow], *, ttl_seconds: int) -> int:
        # TTL is reported at read time from the event time; SQLite keeps rows until rewritten.
        params = [(view, r.entity, r.event_ms, r.blob) for r in rows]
        return await self._db.run(lambda conn: _write(conn, params))

    async def delete_view(self, view: str) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM online_rows WHERE view = ?", (view,)).rowcount

        return await self._db.run(delete)

    async def read_rows(self, view: str, entities: Sequence[str]) -> list[bytes | None]:
        found = await self._db.run(lambda conn: _read(conn, view, entities))
        return [found.get(entity) for entity in entities]


def _write(conn: sqlite3.Connection, params: list[tuple[str, str, int, bytes]]) -> int:
    before = conn.total_changes
    with write_transaction(conn):
        conn.executemany(_UPSERT, params)
    return conn.total_changes - before


def _read(conn: sqlite3.Connection, view: str, entities: Sequence[str]) -> dict[str, bytes]:
    unique = list(dict.fromkeys(entities))
    found: dict[str, bytes] = {}
    # One read transaction: every chunk sees the same snapshot, even with writes in between.
    conn.execute("BEGIN")
    try:
        for start in range(0, len(unique), _READ_CHUNK):
            chunk = unique[start : start + _READ_CHUNK]
            marks = ",".join("?" * len(chunk))
            cursor = conn.execute(
                f"SELECT entity, row FROM online_rows WHERE view = ? AND entity IN ({marks})",
                [view, *chunk],
            )
            found.update(cursor.fetchall())
    finally:
        conn.execute("COMMIT")
    return found
