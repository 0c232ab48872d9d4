"""The registry's model tables as migrations (``registry.db.migrate``), the same on SQLite and
PostgreSQL.

Signatures and configs are stored as JSON text (never pickle, RELIABILITY.md rule 11). The
global revision lives in ``meta`` so it survives restarts and only ever grows.

1 models, versions, labels; 2 ``policies`` (routing policy revisions, an append-only history
per model); 3 ``pending_policies`` (at most one policy per model waiting for its versions to
be READY) and ``models.unloaded`` (RepositoryModelUnload, 0 for every model that existed
before); 4 ``changes`` (which model each revision touched, so a replica learns what another
changed) and ``leases`` (which replica runs the controllers); 5 ``versions.artifact_uri``
(where a version pushed by reference lives; '' for uploaded versions and every version that
existed before). Builds before migrations marked
the file with PRAGMA user_version 1-3, which stand for migrations 1-3.
"""

from __future__ import annotations

from registry.db import Database, Migration, apply_migrations

COMPONENT = "registry"

MIGRATIONS = (
    Migration(
        1,
        "models, versions, labels",
        (
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
            "INSERT INTO meta (key, value) VALUES ('revision', 0) ON CONFLICT (key) DO NOTHING",
            "CREATE TABLE IF NOT EXISTS models ("
            " name TEXT PRIMARY KEY, created_unix_ms BIGINT NOT NULL)",
            """CREATE TABLE IF NOT EXISTS versions (
                model           TEXT NOT NULL REFERENCES models(name),
                version         INTEGER NOT NULL,
                sha256          TEXT NOT NULL,
                size_bytes      BIGINT NOT NULL,
                inputs_json     TEXT NOT NULL,
                outputs_json    TEXT NOT NULL,
                config_json     TEXT NOT NULL,
                platform        TEXT NOT NULL,
                created_unix_ms BIGINT NOT NULL,
                description     TEXT NOT NULL,
                parent_version  INTEGER NOT NULL,
                PRIMARY KEY (model, version)
            )""",
            """CREATE TABLE IF NOT EXISTS labels (
                model   TEXT NOT NULL,
                label   TEXT NOT NULL,
                version INTEGER NOT NULL,
                PRIMARY KEY (model, label),
                FOREIGN KEY (model, version) REFERENCES versions(model, version)
            )""",
        ),
    ),
    Migration(
        2,
        "policies",
        (
            """CREATE TABLE IF NOT EXISTS policies (
                model           TEXT NOT NULL REFERENCES models(name),
                revision        INTEGER NOT NULL,
                policy_json     TEXT NOT NULL,
                note            TEXT NOT NULL,
                created_unix_ms BIGINT NOT NULL,
                PRIMARY KEY (model, revision)
            )""",
        ),
    ),
    Migration(
        3,
        "pending_policies, models.unloaded",
        (
            """CREATE TABLE IF NOT EXISTS pending_policies (
                model            TEXT PRIMARY KEY REFERENCES models(name),
                policy_json      TEXT NOT NULL,
                note             TEXT NOT NULL,
                state            TEXT NOT NULL,
                reason           TEXT NOT NULL,
                created_unix_ms  BIGINT NOT NULL,
                deadline_unix_ms BIGINT NOT NULL
            )""",
            "ALTER TABLE models ADD COLUMN unloaded INTEGER NOT NULL DEFAULT 0",
        ),
    ),
    Migration(
        4,
        "changes, leases",
        (
            "CREATE TABLE changes (revision BIGINT NOT NULL, model TEXT NOT NULL,"
            " PRIMARY KEY (revision, model))",
            "CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL,"
            " expires_unix_ms BIGINT NOT NULL)",
        ),
    ),
    Migration(
        5,
        "versions.artifact_uri",
        ("ALTER TABLE versions ADD COLUMN artifact_uri TEXT NOT NULL DEFAULT ''",),
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: Database) -> None:
    apply_migrations(db, COMPONENT, MIGRATIONS, legacy=3)
