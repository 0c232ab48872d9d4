"""One SQLite connection used only from its own thread, so SQLite never blocks the loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit mode: transactions are explicit (BEGIN/COMMIT) where a batch needs one.
    # Opened on the executor's single thread, the only one that ever touches it.
    conn = sqlite3.connect(path, isolation_level=None)
    # WAL: readers (catalog, lookups) do not wait for a writer; busy_timeout covers the short
    # moments when the catalog and the online store, on their own threads, both write.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class SqliteThread:
    """A connection plus the single thread allowed to use it. ``await SqliteThread.open(p)``."""

    def __init__(self, conn: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self._conn = conn
        self._executor = executor

    @classmethod
    async def open(cls, path: Path, name: str) -> SqliteThread:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(executor, _connect, path)
        return cls(conn, executor)

    async def run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(conn)`` on the connection's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._conn)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown(wait=True)
