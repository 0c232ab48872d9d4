"""The view catalog: feature views persisted in SQLite as JSON text, served from memory.

Lookups read the in-memory map (no I/O on the hot path); applies write through to SQLite on
the catalog's own thread. One featurestore process owns a catalog file. Each view's
materialisation watermark lives in the same file, so a view and its state move together.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from featurestore.rows import MAX_EVENT_MS
from featurestore.sqlite_thread import SqliteThread
from featurestore.views import FeatureView, check_evolution, view_from_json, view_to_json
from modelserve.errors import InvalidArgumentError, NotFoundError
from modelserve.names import validate_name

DB_FILENAME = "featurestore.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feature_views (
    name TEXT PRIMARY KEY,
    spec_json TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    updated_unix_ms INTEGER NOT NULL
)
"""

_STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS materializations (
    view TEXT PRIMARY KEY,
    watermark_unix_ms INTEGER NOT NULL,
    committed_unix_ms INTEGER NOT NULL,
    rows_written INTEGER NOT NULL
)
"""
# rows_written is a count a caller reports; bound it so it stays an SQLite INTEGER.
_MAX_ROWS_WRITTEN = 2**62


@dataclass(frozen=True)
class MaterializationState:
    """How far a view's offline source has been materialised: rows with event times before
    ``watermark_ms`` are in the online store (0 = never materialised)."""

    view: str
    watermark_ms: int = 0
    committed_ms: int = 0
    rows_written: int = 0


class ViewCatalog:
    """Feature views by name. Build with ``await ViewCatalog.open(path)``."""

    def __init__(
        self,
        db: SqliteThread,
        views: dict[str, FeatureView],
        states: dict[str, MaterializationState] | None = None,
    ) -> None:
        self._db = db
        self._views = views
        self._states = states or {}
        # Serialises applies: the evolution check and the write must see the same old view.
        self._apply_lock = asyncio.Lock()
        # Serialises commits: "the watermark only moves forward" is a read-then-write.
        self._commit_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> ViewCatalog:
        """Open (creating if needed) the catalog at ``path``, e.g. data_dir/featurestore.sqlite3."""
        db = await SqliteThread.open(path, "fs-catalog")
        specs, states = await db.run(_load)
        views = {view.name: view for view in map(view_from_json, specs)}
        return cls(db, views, {state.view: state for state in states})

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

    async def delete(self, name: str) -> None:
        """Forget view ``name`` and its materialisation state (NOT_FOUND if unknown)."""
        self.get(name)
        async with self._apply_lock:

            def delete(conn: sqlite3.Connection) -> None:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute("DELETE FROM feature_views WHERE name = ?", (name,))
                    conn.execute("DELETE FROM materializations WHERE view = ?", (name,))
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")

            await self._db.run(delete)
            self._views.pop(name, None)
            self._states.pop(name, None)

    def materialization(self, name: str) -> MaterializationState:
        """The view's materialisation state (NOT_FOUND for an unknown view)."""
        view = self.get(name)
        return self._states.get(view.name, MaterializationState(view=view.name))

    async def commit_materialization(
        self, name: str, up_to_ms: int, rows_written: int
    ) -> MaterializationState:
        """Record a finished run: the watermark becomes max(old, ``up_to_ms``), never less, so
        a slow or repeated run cannot rewind it."""
        view = self.get(name)
        if not 0 <= up_to_ms <= MAX_EVENT_MS:
            raise InvalidArgumentError(
                f"view {view.name!r}: up_to_unix_ms {up_to_ms} is not unix milliseconds in "
                f"[0, {MAX_EVENT_MS}]"
            )
        if not 0 <= rows_written <= _MAX_ROWS_WRITTEN:
            raise InvalidArgumentError(
                f"view {view.name!r}: rows_written must be in [0, {_MAX_ROWS_WRITTEN}], "
                f"got {rows_written}"
            )
        async with self._commit_lock:
            old = self.materialization(view.name)
            state = MaterializationState(
                view=view.name,
                watermark_ms=max(old.watermark_ms, up_to_ms),
                committed_ms=int(time.time() * 1000),
                rows_written=rows_written,
            )
            await self._db.run(lambda conn: _save_state(conn, state))
            self._states[view.name] = state
            return state


def _load(conn: sqlite3.Connection) -> tuple[list[str], list[MaterializationState]]:
    conn.execute(_SCHEMA)
    conn.execute(_STATE_SCHEMA)
    specs = [spec for (spec,) in conn.execute("SELECT spec_json FROM feature_views")]
    states = [
        MaterializationState(*row)
        for row in conn.execute(
            "SELECT view, watermark_unix_ms, committed_unix_ms, rows_written FROM materializations"
        )
    ]
    return specs, states


def _save_state(conn: sqlite3.Connection, state: MaterializationState) -> None:
    conn.execute(
        "INSERT INTO materializations (view, watermark_unix_ms, committed_unix_ms, rows_written) "
        "VALUES (?, ?, ?, ?) ON CONFLICT(view) DO UPDATE SET "
        "watermark_unix_ms = excluded.watermark_unix_ms, "
        "committed_unix_ms = excluded.committed_unix_ms, rows_written = excluded.rows_written",
        (state.view, state.watermark_ms, state.committed_ms, state.rows_written),
    )


def _upsert(conn: sqlite3.Connection, name: str, spec: str, now_ms: int) -> None:
    conn.execute(
        "INSERT INTO feature_views (name, spec_json, created_unix_ms, updated_unix_ms) "
        "VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
        "spec_json = excluded.spec_json, updated_unix_ms = excluded.updated_unix_ms",
        (name, spec, now_ms, now_ms),
    )
