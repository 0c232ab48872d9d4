"""The view catalog: feature views persisted in SQLite as JSON text, served from memory.

Lookups read the in-memory map (no I/O on the hot path); applies write through to SQLite on
the catalog's own thread. One featurestore process owns a catalog file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from modelserve.errors import NotFoundError
from modelserve.names import validate_name

from featurestore.sqlite_thread import SqliteThread
from featurestore.views import FeatureView, check_evolution, view_from_json, view_to_json

DB_FILENAME = "featurestore.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feature_views (
    name TEXT PRIMARY KEY,
    spec_json TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    updated_unix_ms INTEGER NOT NULL
)
"""


class ViewCatalog:
    """Feature views by name. Build with ``await ViewCatalog.open(path)``."""

    def __init__(self, db: SqliteThread, views: dict[str, FeatureView]) -> None:
        self._db = db
        self._views = views
        # Serialises applies: the evolution check and the write must see the same old view.
        self._apply_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> ViewCatalog:
        """Open (creating if needed) the catalog at ``path``, e.g. data_dir/featurestore.sqlite3."""
        db = await SqliteThread.open(path, "fs-catalog")
        specs = await db.run(_load)
        views = {view.name: view for view in map(view_from_json, specs)}
        return cls(db, views)

    async def close(self) -> None:
        await self._db.close()

    def get(self, name: str) -> FeatureView:
        """The view called ``name``, or NOT_FOUND naming it."""
        validate_name(name, "feature view name")
        try:
            return self._views[name]
        except KeyError:
            raise NotFoundError(
                f"feature view {name[:128]!r} not found; apply it first "
                f"({len(self._views)} views exist)"
            ) from None

    def views(self) -> list[FeatureView]:
        """Every view, sorted by name."""
        return [self._views[name] for name in sorted(self._views)]

    async def apply(self, view: FeatureView) -> FeatureView:
        """Create ``view`` or evolve the stored one (FAILED_PRECONDITION if incompatible)."""
        async with self._apply_lock:
            old = self._views.get(view.name)
            if old is not None:
                check_evolution(old, view)
                if old == view:
                    return old
            spec = view_to_json(view)
            now_ms = int(time.time() * 1000)
            await self._db.run(lambda conn: _upsert(conn, view.name, spec, now_ms))
            self._views[view.name] = view
            return view


def _load(conn: sqlite3.Connection) -> list[str]:
    conn.execute(_SCHEMA)
    return [spec for (spec,) in conn.execute("SELECT spec_json FROM feature_views")]


def _upsert(conn: sqlite3.Connection, name: str, spec: str, now_ms: int) -> None:
    conn.execute(
        "INSERT INTO feature_views (name, spec_json, created_unix_ms, updated_unix_ms) "
        "VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
        "spec_json = excluded.spec_json, updated_unix_ms = excluded.updated_unix_ms",
        (name, spec, now_ms, now_ms),
    )
