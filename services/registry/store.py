"""RegistryStore: model versions, labels and a global revision in SQLite or PostgreSQL
(``registry.db``), artifacts on disk.

Every method is synchronous and blocking; the servicer calls them from one dedicated thread.
A lock still serialises them, so a second caller (a seeding script, a test) cannot interleave.

Crash safety: an artifact is durable at its content address before the row that names it is
committed, so a row never lacks its file; a crash in between leaves only an unreferenced file,
removed on the next start. One process owns a data directory at a time (an flock), so SQLite
always has one writer; on PostgreSQL several replicas (each its own data dir) share the
database, and ``_transaction`` makes their writers take turns.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from modelserve.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from modelserve.names import validate_name
from registry import schema
from registry.artifacts import ArtifactStore, check_sha256
from registry.config import ConfigOverrides, resolve_config
from registry.db import Database, open_database
from registry.db.follow import CHANNEL as CHANGES_CHANNEL
from registry.db.follow import ChangeFollower
from registry.db.lease import release_lease, take_lease
from registry.onnx_inspect import ModelSignature
from registry.policies.store import PolicyStoreMethods
from registry.records import PRODUCTION, ChangeEvent, ModelRecord, Snapshot, VersionRecord
from registry.rows import config_to_json, specs_to_json, version_from_row

log = logging.getLogger(__name__)

MAX_DESCRIPTION_CHARS = 1024
MAX_LABELS_PER_PUSH = 16
_LISTED = 20  # how many names a NOT_FOUND message lists before "..."

KEPT_CHANGES = 10_000  # revisions whose touched models stay in ``changes``


ChangeListener = Callable[[ChangeEvent], None]


class RegistryStore(PolicyStoreMethods):
    """The registry's persistent state under ``data_dir``.

    ``on_change`` is called after each committed change, in commit order, on the thread that
    made it (keep it non-blocking: ``WatchHub.publish_threadsafe`` is meant for it).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        database_url: str = "",
        on_change: ChangeListener | None = None,
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.database_url = database_url
        self._on_change = on_change
        self._lock = threading.RLock()
        self._lock_fd = _lock_data_dir(data_dir / "registry.lock")
        self._follower: ChangeFollower | None = None
        try:
            self._db = open_database(database_url, data_dir / "registry.sqlite3")
            schema.migrate(self._db)
            self._announced = _revision(self._db)
            self._artifacts = ArtifactStore(data_dir / "artifacts", data_dir / "tmp")
            self._artifacts.clear_temp()
            self._artifacts.remove_unreferenced(self._all_sha256())
        except BaseException:
            os.close(self._lock_fd)
            raise

    def close(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        with self._lock:
            self._db.close()
            os.close(self._lock_fd)

    @property
    def shared(self) -> bool:
        """True on PostgreSQL, where other replicas may write the same database."""
        return self._db.dialect != "sqlite"

    def follow(self, poll_s: float = 1.0) -> None:
        """Announce other replicas' writes too: a thread wakes on PostgreSQL's NOTIFY (or
        every ``poll_s``, should a notification be lost) and runs ``catch_up``. Nothing to do
        on SQLite, which has no other writer."""
        if self.shared and self._follower is None:
            self._follower = ChangeFollower(self.database_url, self.catch_up, poll_s)
            self._follower.start()

    # ---- leases (registry.db.lease) ------------------------------------------------------

    def take_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        with self._lock:
            return take_lease(self._db, name, holder, ttl_s)

    def release_lease(self, name: str, holder: str) -> None:
        with self._lock:
            release_lease(self._db, name, holder)

    # ---- uploads -------------------------------------------------------------------------

    def new_upload_path(self) -> Path:
        """An empty temp file (same filesystem as the artifacts) for an upload to fill."""
        return self._artifacts.new_temp_path()

    def push_version(
        self,
        model: str,
        artifact: Path,
        *,
        sha256: str,
        size_bytes: int,
        signature: ModelSignature,
        config: ConfigOverrides | None = None,
        labels: Sequence[str] = (),
        description: str = "",
        parent_version: int = 0,
        artifact_uri: str = "",
    ) -> VersionRecord:
        """Store ``artifact`` (already hashed and inspected) as the model's next version.

        The caller still owns ``artifact`` and removes it afterwards (it may have been moved
        into the store, or left in place when an identical file was already stored). With
        ``artifact_uri`` (a push by reference, already read and verified from there) the file
        is not kept: the version records the URI, and readers go there.
        """
        check_push(model, labels, description, parent_version)
        check_sha256(sha256)
        if size_bytes <= 0:
            raise InvalidArgumentError(f"artifact must not be empty; got {size_bytes} bytes")
        resolved = resolve_config(config, signature.inputs, signature.outputs)
        with self._lock:
            if parent_version:
                self._require_version(model, parent_version)
            if not artifact_uri:
                self._artifacts.ingest(artifact, sha256, size_bytes)
            with self._transaction(model) as conn:
                now = int(time.time() * 1000)
                conn.execute(
                    "INSERT INTO models (name, created_unix_ms) VALUES (?, ?) "
                    "ON CONFLICT (name) DO NOTHING",
                    (model, now),
                )
                row = conn.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE model = ?", (model,)
                ).fetchone()
                version = int(row[0])
                conn.execute(
                    "INSERT INTO versions (model, version, sha256, size_bytes, inputs_json, "
                    "outputs_json, config_json, platform, created_unix_ms, description, "
                    "parent_version, artifact_uri) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        model, version, sha256, size_bytes,
                        specs_to_json(signature.inputs), specs_to_json(signature.outputs),
                        config_to_json(resolved), signature.platform, now, description,
                        parent_version, artifact_uri,
                    ),
                )  # fmt: skip
                for label in dict.fromkeys(labels):
                    _upsert_label(conn, model, label, version)
            return self._read_version(model, version)

    # ---- reads ---------------------------------------------------------------------------

    def revision(self) -> int:
        with self._lock:
            return _revision(self._db)

    def list_models(self) -> tuple[ModelRecord, ...]:
        return self.snapshot().models

    def snapshot(self) -> Snapshot:
        """Every model and the revision they are at, read in one transaction."""
        with self._lock:
            with self._db.snapshot():
                revision = _revision(self._db)
                models = self._read_models(None)
            return Snapshot(revision=revision, models=models)

    def get_model(self, name: str) -> ModelRecord:
        validate_name(name, "model name")
        with self._lock:
            found = self._read_models(name)
            if not found:
                raise NotFoundError(self._unknown_model(name))
            return found[0]

    def resolve(self, model: str, version: int = 0, label: str = "") -> VersionRecord:
        """version > 0: that version; label: the version it points at; neither: what the
        routing policy would answer a lookup (modelserve.catalog.replica.resolve_version), else the
        "production" label if set, else the newest version."""
        validate_name(model, "model name")
        if version < 0:
            raise InvalidArgumentError(f"version must be >= 0 (0 = by label); got {version}")
        if version and label:
            raise InvalidArgumentError(
                f"give a version or a label, not both; got version {version} and label {label!r}"
            )
        with self._lock:
            self._require_model(model)
            if version:
                self._require_version(model, version)
            elif label:
                version = self._require_label(model, validate_name(label, "label"))
            else:
                version = (
                    self._policy_default(model)
                    or _label_version(self._db, model, PRODUCTION)
                    or _newest(self._db, model)
                )
            return self._read_version(model, version)

    def artifact_path(self, model: str, version: int) -> Path:
        """Where the artifact of ``model`` ``version`` (0 = default resolution) is stored."""
        return self.artifact_path_for(self.resolve(model, version))

    def artifact_path_for(self, record: VersionRecord) -> Path:
        if record.artifact_uri:  # callers read these from the URI (RegistryServicer)
            raise FailedPreconditionError(
                f"model {record.model!r} version {record.version} was pushed by reference "
                f"({record.artifact_uri}); the registry keeps no copy"
            )
        path = self._artifacts.path_for(record.sha256)
        if not path.is_file():
            log.error("artifact file %s for %s v%d is missing", path, record.model, record.version)
            raise FailedPreconditionError(
                f"the artifact of model {record.model!r} version {record.version} is missing "
                "from the registry's storage; push the version again"
            )
        return path

    # ---- labels --------------------------------------------------------------------------

    def set_label(self, model: str, label: str, version: int) -> ModelRecord:
        """Point ``label`` at ``version`` (moving it if it exists) in one transaction."""
        validate_name(model, "model name")
        validate_name(label, "label")
        with self._lock:
            self._require_model(model)
            if version <= 0:
                raise InvalidArgumentError(f"version must be >= 1; got {version}")
            self._require_version(model, version)
            if _label_version(self._db, model, label) == version:
                return self.get_model(model)  # already so: not a change, no new revision
            with self._transaction(model) as conn:
                _upsert_label(conn, model, label, version)
            return self.get_model(model)

    def delete_label(self, model: str, label: str) -> ModelRecord:
        validate_name(model, "model name")
        validate_name(label, "label")
        with self._lock:
            self._require_model(model)
            self._require_label(model, label)
            now = self._current_policy(model)
            if now is not None and label in now.policy.labels():
                raise FailedPreconditionError(
                    f"label {label!r} is in the routing policy of model {model!r} (policy "
                    f"revision {now.revision}); change or clear the policy first"
                )
            with self._transaction(model) as conn:
                conn.execute("DELETE FROM labels WHERE model = ? AND label = ?", (model, label))
            return self.get_model(model)

    # ---- loaded / unloaded ----------------------------------------------------------------

    def set_model_loaded(self, model: str, loaded: bool) -> ModelRecord:
        """Mark ``model`` loaded or unloaded (workers then deploy it or not); setting the
        state it already has changes nothing and makes no new revision."""
        validate_name(model, "model name")
        with self._lock:
            self._require_model(model)
            row = self._db.execute("SELECT unloaded FROM models WHERE name = ?", (model,))
            if bool(row.fetchone()[0]) == (not loaded):
                return self.get_model(model)
            with self._transaction(model) as conn:
                conn.execute(
                    "UPDATE models SET unloaded = ? WHERE name = ?", (0 if loaded else 1, model)
                )
            return self.get_model(model)

    # ---- internals -----------------------------------------------------------------------

    @contextmanager
    def _transaction(self, model: str) -> Iterator[Database]:
        """One write transaction that changes ``model`` and bumps the revision.

        The revision is bumped first: its row lock (PostgreSQL; SQLite's write lock does the
        same) makes writers of every replica take turns, so revisions commit in order and
        each writer's reads see every earlier commit. The touched model is recorded in
        ``changes`` under the revision, which is how any replica learns what changed; the
        change is announced after the commit (``catch_up``)."""
        with self._db.transaction() as db:
            row = db.execute(
                "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value"
            ).fetchone()
            revision = int(row[0])
            yield db
            db.execute("INSERT INTO changes (revision, model) VALUES (?, ?)", (revision, model))
            db.execute("DELETE FROM changes WHERE revision <= ?", (revision - KEPT_CHANGES,))
            db.notify(CHANGES_CHANNEL)
        self.catch_up()

    def catch_up(self) -> int:
        """Announce every revision committed since the last announcement (by this process or,
        on a shared database, another replica) as one ChangeEvent with the current state of
        each model they touched; the revision announced."""
        with self._lock:
            revision = _revision(self._db)
            if revision <= self._announced:
                return self._announced
            since, self._announced = self._announced, revision
            if self._on_change is None:
                return revision
            oldest = self._db.execute("SELECT MIN(revision) FROM changes").fetchone()[0]
            if oldest is None or oldest > since + 1:  # trimmed away: send every model
                names = [r[0] for r in self._db.execute("SELECT name FROM models ORDER BY name")]
            else:
                names = [
                    r[0]
                    for r in self._db.execute(
                        "SELECT DISTINCT model FROM changes WHERE revision > ? AND revision <= ? "
                        "ORDER BY model",
                        (since, revision),
                    )
                ]
            models = tuple(m for name in names for m in self._read_models(name))
            try:
                self._on_change(ChangeEvent(revision=revision, models=models))
            except Exception:  # committed already: a failing listener must not fail the caller
                log.exception("change listener failed at revision %d", revision)
            return revision

    def _read_models(self, name: str | None) -> tuple[ModelRecord, ...]:
        where, args = ("WHERE model = ?", (name,)) if name is not None else ("", ())
        labels: dict[str, dict[str, int]] = defaultdict(dict)
        by_version: dict[tuple[str, int], list[str]] = defaultdict(list)
        for row in self._db.execute(f"SELECT * FROM labels {where}", args):
            labels[row["model"]][row["label"]] = row["version"]
            by_version[(row["model"], row["version"])].append(row["label"])
        versions: dict[str, list[VersionRecord]] = defaultdict(list)
        rows = self._db.execute(f"SELECT * FROM versions {where} ORDER BY model, version", args)
        for row in rows:
            key = (row["model"], row["version"])
            versions[row["model"]].append(version_from_row(row, by_version[key]))
        current = self._current_policies(name)
        pending = self._pending_policies(name)
        only = "AND name = ?" if name is not None else ""
        unloaded = {
            r[0]
            for r in self._db.execute(f"SELECT name FROM models WHERE unloaded != 0 {only}", args)
        }
        return tuple(
            ModelRecord(
                name=model,
                versions=tuple(vs),
                labels=dict(sorted(labels[model].items())),
                policy=current.get(model),
                pending=pending.get(model),
                unloaded=model in unloaded,
            )
            for model, vs in versions.items()
        )

    def _read_version(self, model: str, version: int) -> VersionRecord:
        row = self._db.execute(
            "SELECT * FROM versions WHERE model = ? AND version = ?", (model, version)
        ).fetchone()
        labels = [
            r[0]
            for r in self._db.execute(
                "SELECT label FROM labels WHERE model = ? AND version = ?", (model, version)
            )
        ]
        return version_from_row(row, labels)

    def _require_model(self, model: str) -> None:
        if self._db.execute("SELECT 1 FROM models WHERE name = ?", (model,)).fetchone() is None:
            raise NotFoundError(self._unknown_model(model))

    def _require_version(self, model: str, version: int) -> None:
        self._require_model(model)
        rows = self._db.execute(
            "SELECT version FROM versions WHERE model = ? ORDER BY version", (model,)
        ).fetchall()
        known = [r[0] for r in rows]
        if version not in known:
            raise NotFoundError(
                f"model {model!r} has no version {version} (versions: {_listing(known)})"
            )

    def _require_label(self, model: str, label: str) -> int:
        found = _label_version(self._db, model, label)
        if found is None:
            rows = self._db.execute(
                "SELECT label FROM labels WHERE model = ? ORDER BY label", (model,)
            ).fetchall()
            raise NotFoundError(
                f"model {model!r} has no label {label!r} (labels: {_listing(r[0] for r in rows)})"
            )
        return found

    def _unknown_model(self, model: str) -> str:
        rows = self._db.execute("SELECT name FROM models ORDER BY name").fetchall()
        return f"unknown model {model!r} (models: {_listing(r[0] for r in rows)})"

    def _all_sha256(self) -> list[str]:
        """The sha256 of every artifact kept here (versions by reference keep none)."""
        rows = self._db.execute("SELECT DISTINCT sha256 FROM versions WHERE artifact_uri = ''")
        return [r[0] for r in rows]


def check_push(model: str, labels: Sequence[str], description: str, parent_version: int) -> None:
    """The checks on a push that need no artifact: run them before accepting any bytes."""
    validate_name(model, "model name")
    if len(labels) > MAX_LABELS_PER_PUSH:
        raise InvalidArgumentError(
            f"a push may set at most {MAX_LABELS_PER_PUSH} labels; got {len(labels)}"
        )
    for label in labels:
        validate_name(label, "label")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidArgumentError(
            f"description must be at most {MAX_DESCRIPTION_CHARS} characters; "
            f"got {len(description)}"
        )
    if parent_version < 0:
        raise InvalidArgumentError(f"parent_version must be >= 0; got {parent_version}")


def _lock_data_dir(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FailedPreconditionError(
            "another registry process is using this data directory; stop it or choose "
            "another MODELSERVE_DATA_DIR"
        ) from None
    return fd


def _revision(conn: Database) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])


def _label_version(conn: Database, model: str, label: str) -> int | None:
    row = conn.execute(
        "SELECT version FROM labels WHERE model = ? AND label = ?", (model, label)
    ).fetchone()
    return None if row is None else int(row[0])


def _newest(conn: Database, model: str) -> int:
    return int(
        conn.execute("SELECT MAX(version) FROM versions WHERE model = ?", (model,)).fetchone()[0]
    )


def _upsert_label(conn: Database, model: str, label: str, version: int) -> None:
    moved = conn.execute(
        "UPDATE labels SET version = ? WHERE model = ? AND label = ?", (version, model, label)
    )
    if moved.rowcount == 0:
        conn.execute(
            "INSERT INTO labels (model, label, version) VALUES (?, ?, ?)", (model, label, version)
        )


def _listing(items: Iterable[object]) -> str:
    names = [str(item) for item in items]
    if not names:
        return "none"
    shown = ", ".join(names[:_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _LISTED else "")
