"""Leases: which replica runs a controller (canaries, pending policies) when several share one
database. A lease is a row (name, holder, expires_unix_ms) taken or renewed in one upsert:
the holder renews it; anyone takes it once it has expired, so a replica that died (kill -9)
hands over within the lease's time to live. On SQLite one process owns the data dir, so it is
always the holder; the same statement serves both.

Expiry is judged on the replicas' clocks: they must agree to well within the time to live
(NTP does; the default 10 s leaves ample margin).
"""

from __future__ import annotations

import time

from registry.db.core import Database

_TAKE = (
    "INSERT INTO leases (name, holder, expires_unix_ms) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
    "expires_unix_ms = excluded.expires_unix_ms "
    "WHERE leases.holder = excluded.holder OR leases.expires_unix_ms < ? "
    "RETURNING holder"
)


def take_lease(db: Database, name: str, holder: str, ttl_s: float) -> bool:
    """Take or renew ``name`` for ``ttl_s`` seconds; True when ``holder`` holds it now."""
    now = int(time.time() * 1000)
    with db.transaction():
        row = db.execute(_TAKE, (name, holder, now + int(ttl_s * 1000), now)).fetchone()
    return row is not None


def release_lease(db: Database, name: str, holder: str) -> None:
    """Give ``name`` up (a graceful stop), so another replica need not wait for it to expire."""
    with db.transaction():
        db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))


def lease_holder(db: Database, name: str) -> str:
    """Who holds ``name`` now ("" when nobody holds an unexpired lease)."""
    row = db.execute(
        "SELECT holder FROM leases WHERE name = ? AND expires_unix_ms >= ?",
        (name, int(time.time() * 1000)),
    ).fetchone()
    return "" if row is None else str(row[0])
