"""The registry's SQLite schema and how a connection is opened.

Signatures and configs are stored as JSON text (never pickle, RELIABILITY.md rule 11). The
global revision lives in ``meta`` so it survives restarts and only ever grows.

Schema versions: 1 models, versions, labels; 2 adds ``policies`` (routing policy revisions,
an append-only history per model); 3 adds ``pending_policies`` (at most one policy per model
waiting for its versions to be READY) and ``models.unloaded`` (RepositoryModelUnload, 0 for
every model that existed before). Opening an older file creates the new table and adds the
column; a file of a newer version than this build knows is refused rather than misread.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from modelserve.errors import FailedPreconditionError

SCHEMA_VERSION = 3

_DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0);
CREATE TABLE IF NOT EXISTS models (
    name            TEXT PRIMARY KEY,
    created_unix_ms INTEGER NOT NULL,
    unloaded        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS versions (
    model           TEXT NOT NULL REFERENCES models(name),
    version         INTEGER NOT NULL,
    sha256          TEXT NOT NULL,
    size_bytes      INTEGER NOT NULL,
    inputs_json     TEXT NOT NULL,
    outputs_json    TEXT NOT NULL,
    config_json     TEXT NOT NULL,
    platform        TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    description     TEXT NOT NULL,
    parent_version  INTEGER NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS labels (
    model   TEXT NOT NULL,
    label   TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (model, label),
    FOREIGN KEY (model, version) REFERENCES versions(model, version)
);
CREATE TABLE IF NOT EXISTS policies (
    model           TEXT NOT NULL REFERENCES models(name),
    revision        INTEGER NOT NULL,
    policy_json     TEXT NOT NULL,
    note            TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (model, revision)
);
CREATE TABLE IF NOT EXISTS pending_policies (
    model            TEXT PRIMARY KEY REFERENCES models(name),
    policy_json      TEXT NOT NULL,
    note             TEXT NOT NULL,
    state            TEXT NOT NULL,
    reason           TEXT NOT NULL,
    created_unix_ms  INTEGER NOT NULL,
    deadline_unix_ms INTEGER NOT NULL
);
"""

# Models changed by the current transaction, recorded by triggers so that no mutation can
# forget to announce what it changed; the store reads and clears it before each commit.
# TEMP: private to this connection, never written to the database file.
_TOUCHED_DDL = """
CREATE TEMP TABLE temp_touched (name TEXT PRIMARY KEY);
CREATE TEMP TRIGGER touch_version AFTER INSERT ON versions BEGIN
    INSERT OR IGNORE INTO temp_touched VALUES (NEW.model); END;
CREATE TEMP TRIGGER touch_label_ins AFTER INSERT ON labels BEGIN
    INSERT OR IGNORE INTO temp_touched VALUES (NEW.model); END;
CREATE TEMP TRIGGER touch_label_upd AFTER UPDATE ON labels BEGIN
    INSERT OR IGNORE INTO temp_touched VALUES (NEW.model); END;
CREATE TEMP TRIGGER touch_label_del AFTER DELETE ON labels BEGIN
    INSERT OR IGNORE INTO temp_touched VALUES (OLD.model); END;
CREATE TEMP TRIGGER touch_policy AFTER INSERT ON policies BEGIN
    INSERT OR IGNORE INTO temp_touched VALUES (NEW.model); END;
CREATE TEMP TRIGGER touch_pending_ins AFTER INSERT ON pending_policies BEGIN
    INSERT OR IGNORE INTO temp_touched VALUES (NEW.model); END;
CREATE TEMP TRIGGER touch_pending_upd AFTER UPDATE ON pending_policies BEGIN
    INSERT OR IGNORE INTO temp_touched VALUES (NEW.model); END;
CREATE TEMP TRIGGER touch_pending_del AFTER DELETE ON pending_policies BEGIN
    INSERT OR IGNORE INTO temp_touched VALUES (OLD.model); END;
CREATE TEMP TRIGGER touch_model_upd AFTER UPDATE ON models BEGIN
    INSERT OR IGNORE INTO temp_touched VALUES (NEW.name); END;
"""


def open_database(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the registry database in WAL mode with full fsync on commit.

    ``isolation_level=None``: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) so a
    mutation is one atomic unit. ``check_same_thread=False``: the store serialises access
    itself and is used from its executor thread.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a push or label change acknowledged to the caller survives a power cut; registry
    # writes are rare, so the extra fsync costs nothing that matters.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        conn.close()
        raise FailedPreconditionError(
            f"registry database has schema version {found}; this build understands up to "
            f"{SCHEMA_VERSION}: upgrade modelserve"
        )
    # Version 3's column: CREATE TABLE IF NOT EXISTS leaves an older file's table as it was.
    missing = "unloaded" not in {r[1] for r in conn.execute("PRAGMA table_info(models)")}
    upgrade = (
        "ALTER TABLE models ADD COLUMN unloaded INTEGER NOT NULL DEFAULT 0;"
        if (found and missing)
        else ""
    )
    conn.executescript(f"BEGIN; {_DDL} {upgrade} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
    conn.executescript(_TOUCHED_DDL)
    return conn
