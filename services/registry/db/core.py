"""``Database``: a connection to SQLite or PostgreSQL behind the calls the registry's stores make.

One ``Database`` is one connection, used by one thread at a time: every store already
serialises its calls (a lock, its executor thread), so the layer adds no locking of its own.
Transactions are explicit. ``transaction()`` is a write transaction: SQLite takes the write
lock at BEGIN (IMMEDIATE, so two writers never deadlock upgrading a read); PostgreSQL runs
READ COMMITTED, where each statement sees what committed before it, so a store that locks a
row first (the registry's revision) sees every earlier writer's rows. ``snapshot()`` reads
several statements as of one moment (SQLite: a deferred transaction; PostgreSQL: REPEATABLE
READ, READ ONLY).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


class Row(Protocol):
    """A result row, by column position or by name (sqlite3.Row and ``_PgRow`` both are)."""

    def __getitem__(self, key: int | str) -> Any: ...


class Result(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Database:
    """What the stores use; ``dialect`` is ``"sqlite"`` or ``"postgresql"``."""

    dialect: str = ""
    url: str = ""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        raise NotImplementedError

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """A write transaction: committed when the block ends, rolled back on any exception."""
        self._begin(write=True)
        try:
            yield self
        except BaseException:
            self._rollback()
            raise
        self.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[Database]:
        """Reads that see one consistent state of the database."""
        self._begin(write=False)
        try:
            yield self
        finally:
            self._rollback()  # nothing was written: ending it either way is the same

    def notify(self, channel: str) -> None:
        """Wake listeners on ``channel`` when the current transaction commits (PostgreSQL's
        NOTIFY; SQLite has one process, which learns of its own writes directly)."""

    def lock_schema(self) -> None:
        """Within a transaction: keep other processes from migrating at the same time."""

    def user_version(self) -> int:
        """SQLite's ``PRAGMA user_version`` (0 elsewhere): the schema marker of older builds."""
        return 0

    def set_user_version(self, version: int) -> None:
        pass

    def close(self) -> None:
        raise NotImplementedError

    def _begin(self, *, write: bool) -> None:
        raise NotImplementedError

    def _rollback(self) -> None:
        try:
            self.execute("ROLLBACK")
        except Exception:  # the connection broke: the server rolled back already
            log.debug("rollback failed", exc_info=True)


class SqliteDatabase(Database):
    dialect = SQLITE

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        """WAL; ``synchronous`` FULL (a commit survives a power cut) or NORMAL (a crash may
        lose the last commits, never the file: for aggregates written per request).

        ``isolation_level=None``: transactions are explicit. ``check_same_thread=False``: the
        owning store serialises access itself and calls from its executor thread."""
        self.url = str(path)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.execute("PRAGMA foreign_keys=ON")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        return self._conn.execute(sql, tuple(params))

    def user_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def set_user_version(self, version: int) -> None:
        self._conn.execute(f"PRAGMA user_version = {int(version)}")

    def close(self) -> None:
        self._conn.close()

    def _begin(self, *, write: bool) -> None:
        self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")


class _PgRow:
    """A row by position or by column name, like sqlite3.Row."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = tuple(values)
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def keys(self) -> list[str]:
        return list(self._index)


def _pg_row_factory(cursor: Any) -> Any:
    names = [c.name for c in cursor.description or ()]
    index = {name: i for i, name in enumerate(names)}
    return lambda values: _PgRow(values, index)


@lru_cache(maxsize=512)
def to_pg(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled first). The stores'
    SQL never has a ``?`` inside a string literal, so a plain replace is exact."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresDatabase(Database):
    """psycopg 3, synchronous, autocommit with explicit BEGIN/COMMIT; reconnects when the
    connection broke (the server restarted) at the next statement outside a transaction."""

    dialect = POSTGRESQL

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn = self._connect()
        self._depth = 0

    def _connect(self) -> Any:
        import psycopg  # the `postgres` extra: SQLite-only installs never import it

        return psycopg.connect(self.url, autocommit=True, row_factory=_pg_row_factory)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        if self._conn.broken and self._depth == 0:
            log.warning("PostgreSQL connection lost; reconnecting")
            self._conn = self._connect()
        cursor: Result = self._conn.execute(to_pg(sql), tuple(params))
        return cursor

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        with super().transaction() as db:
            self._depth += 1
            try:
                yield db
            finally:
                self._depth -= 1

    def notify(self, channel: str) -> None:
        self.execute("SELECT pg_notify(?, '')", (channel,))

    def lock_schema(self) -> None:
        # A transaction-scoped advisory lock: two replicas starting together migrate in turn.
        self.execute("SELECT pg_advisory_xact_lock(?)", (0x6D736D67,))  # "msmg"

    def close(self) -> None:
        self._conn.close()

    def _begin(self, *, write: bool) -> None:
        self.execute("BEGIN" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")


def open_database(url: str, sqlite_path: Path, *, synchronous: str = "FULL") -> Database:
    """``url`` empty: SQLite at ``sqlite_path``; ``postgresql://...``: that database."""
    if not url:
        return SqliteDatabase(sqlite_path, synchronous=synchronous)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url)
    scheme = url.split(":")[0]  # never the rest: it may hold a password
    raise ValueError(f"registry_database_url must be empty or postgresql://...; got {scheme}:")
