"""Durable local storage, the same wherever a service keeps state on disk (the registry's
SQLite files and artifacts, the feature store's SQLite store, the worker's artifact cache)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on a connection opened with ``isolation_level=None``: the write
    lock is taken at BEGIN (IMMEDIATE, so two writers never deadlock upgrading a read), and
    any exception rolls everything back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def fsync_dir(directory: Path) -> None:
    """Make a rename into ``directory`` survive a crash (the file's data is fsynced before)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
