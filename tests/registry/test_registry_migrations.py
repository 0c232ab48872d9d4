"""Versioned migrations on both backends: a new database records every migration of every
component; one newer than this build is refused; a SQLite file of a build before migrations
(PRAGMA user_version 3) is recorded as having applied 1-3 and gains the rest."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from registry_testkit import FRAUD_V1, make_legacy_sqlite, open_store, push_direct

from modelserve.errors import FailedPreconditionError
from registry import schema
from registry.canary.store import CanaryStore
from registry.db import open_database
from registry.experiments.store import ExperimentStore

pytestmark = pytest.mark.usefixtures("database_url")


def ledger(url: str, path: Path) -> dict[str, list[int]]:
    db = open_database(url, path)
    try:
        rows = db.execute(
            "SELECT component, version FROM schema_migrations ORDER BY component, version"
        ).fetchall()
    finally:
        db.close()
    found: dict[str, list[int]] = {}
    for row in rows:
        found.setdefault(row[0], []).append(int(row[1]))
    return found


def test_a_new_database_records_every_migration(tmp_path: Path, database_url: str) -> None:
    store = open_store(tmp_path / "data")
    canaries = CanaryStore(tmp_path / "data" / "canaries.sqlite3", database_url=database_url)
    experiments = ExperimentStore(
        tmp_path / "data" / "experiments.sqlite3", store, database_url=database_url
    )
    canaries.close()
    experiments.close()
    store.close()
    registry = ledger(database_url, tmp_path / "data" / "registry.sqlite3")
    assert registry["registry"] == list(range(1, schema.SCHEMA_VERSION + 1))
    if database_url:  # one database: every component's history in one table
        assert registry["canaries"] == [1] and registry["experiments"] == [1]
    else:  # a file each, each with its own history (and user_version for older builds)
        assert ledger("", tmp_path / "data" / "canaries.sqlite3") == {"canaries": [1]}
        conn = sqlite3.connect(tmp_path / "data" / "registry.sqlite3")
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        conn.close()


def test_reopening_applies_nothing_and_keeps_the_data(tmp_path: Path) -> None:
    store = open_store(tmp_path / "data")
    push_direct(store, "fraud", FRAUD_V1, labels=["production"])
    revision = store.revision()
    store.close()
    again = open_store(tmp_path / "data")
    try:
        assert again.revision() == revision
        assert again.resolve("fraud", label="production").version == 1
    finally:
        again.close()


def test_a_database_newer_than_this_build_is_refused(tmp_path: Path, database_url: str) -> None:
    open_store(tmp_path / "data").close()
    db = open_database(database_url, tmp_path / "data" / "registry.sqlite3")
    db.execute(
        "INSERT INTO schema_migrations VALUES ('registry', ?, 'from the future', 0)",
        (schema.SCHEMA_VERSION + 1,),
    )
    db.close()
    with pytest.raises(FailedPreconditionError, match="upgrade modelserve"):
        open_store(tmp_path / "data")


def test_an_sqlite_file_marked_newer_is_refused(tmp_path: Path) -> None:
    from registry.store import RegistryStore

    RegistryStore(tmp_path / "data").close()
    conn = sqlite3.connect(tmp_path / "data" / "registry.sqlite3")
    conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(FailedPreconditionError, match="schema version"):
        RegistryStore(tmp_path / "data")


def test_a_schema_3_file_of_an_older_build_gains_a_history(tmp_path: Path) -> None:
    from registry.store import RegistryStore

    store = RegistryStore(tmp_path / "data")
    push_direct(store, "fraud", FRAUD_V1)
    store.close()
    make_legacy_sqlite(tmp_path / "data" / "registry.sqlite3", 3)
    store = RegistryStore(tmp_path / "data")
    try:
        assert [v.version for v in store.get_model("fraud").versions] == [1]
        push_direct(store, "fraud", FRAUD_V1)  # writes `changes`, which migration 4 made
    finally:
        store.close()
    db = open_database("", tmp_path / "data" / "registry.sqlite3")
    names = [r[0] for r in db.execute("SELECT name FROM schema_migrations ORDER BY version")]
    db.close()
    assert len(names) == schema.SCHEMA_VERSION
    assert all("user_version 3" in n for n in names[:3]) and "user_version" not in names[3]


def test_a_schema_4_database_gains_artifact_uri_and_keeps_its_versions(
    tmp_path: Path, database_url: str
) -> None:
    store = open_store(tmp_path / "data")
    push_direct(store, "fraud", FRAUD_V1, labels=["production"])
    store.close()
    # Back to what a build before migration 5 left: no column, no ledger row for it.
    db = open_database(database_url, tmp_path / "data" / "registry.sqlite3")
    with db.transaction():
        db.execute("ALTER TABLE versions DROP COLUMN artifact_uri")
        db.execute("DELETE FROM schema_migrations WHERE component = 'registry' AND version = 5")
    db.close()

    store = open_store(tmp_path / "data")
    try:
        (version,) = store.get_model("fraud").versions
        assert (version.version, version.artifact_uri) == (1, "")
        assert store.artifact_path("fraud", 1).read_bytes() == FRAUD_V1
    finally:
        store.close()
    assert ledger(database_url, tmp_path / "data" / "registry.sqlite3")["registry"][-1] == 5
