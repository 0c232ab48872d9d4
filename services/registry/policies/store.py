"""RegistryStore's routing-policy methods, kept beside it as a mixin: they use the store's
lock, connection and transaction, so a policy change is one more committed registry change,
announced to watchers with the model it touched (``_transaction(model)``). The rules a
policy follows and its rows are in ``registry.policies.rules``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from modelserve.catalog.lookups import PLATFORM as LOOKUP_PLATFORM
from modelserve.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from modelserve.names import validate_name
from registry.db import Database, Row
from registry.policies import rules as policies
from registry.records import (
    FAILED,
    PRODUCTION,
    WAITING,
    PendingPolicy,
    PolicyRevision,
    RoutingPolicy,
)


class PolicyStoreMethods:
    if TYPE_CHECKING:  # provided by RegistryStore
        _lock: threading.RLock
        _db: Database

        def _require_model(self, model: str) -> None: ...
        def _transaction(self, model: str) -> AbstractContextManager[Database]: ...

    def set_policy(self, model: str, policy: RoutingPolicy, note: str = "") -> PolicyRevision:
        """Make ``policy`` the model's policy as a new revision (unless it already is)."""
        validate_name(model, "model name")
        policies.check_policy(policy)
        policies.check_note(note)
        with self._lock:
            self._require_model(model)
            return self._write_policy(model, policy, note)

    def clear_policy(self, model: str, note: str = "") -> PolicyRevision:
        """Back to the default resolution, as a new revision (revision 0 if none was set)."""
        validate_name(model, "model name")
        policies.check_note(note)
        with self._lock:
            self._require_model(model)
            return self._write_policy(model, RoutingPolicy(), note)

    def rollback_policy(self, model: str, to_revision: int = 0) -> PolicyRevision:
        """Restore revision ``to_revision``'s policy (0: the one before the current, which is
        "no policy" when the current is the first) as a new revision."""
        policy, note = self.policy_to_restore(model, to_revision)
        with self._lock:
            return self._write_policy(model, policy, note)

    def policy_to_restore(self, model: str, to_revision: int = 0) -> tuple[RoutingPolicy, str]:
        """The policy a rollback to ``to_revision`` restores, and the note it is written with."""
        validate_name(model, "model name")
        if to_revision < 0:
            raise InvalidArgumentError(f"to_revision must be >= 0; got {to_revision}")
        with self._lock:
            self._require_model(model)
            now = self._current_policy(model)
            if now is None:
                raise FailedPreconditionError(f"model {model!r} has no policy to roll back")
            target = to_revision or now.revision - 1
            if target > now.revision:
                raise NotFoundError(
                    f"model {model!r} has no policy revision {target} (revisions: 1-{now.revision})"
                )
            found = policies.at_revision(self._db, model, target) if target else None
            restored = found.policy if found is not None else RoutingPolicy()
            return restored, f"rollback to revision {target}"

    def policy_history(self, model: str, limit: int = 0) -> tuple[PolicyRevision, ...]:
        """The newest ``limit`` (0 = 100) policy revisions of ``model``, oldest first."""
        validate_name(model, "model name")
        limit = policies.check_history_limit(limit)
        with self._lock:
            self._require_model(model)
            return policies.history(self._db, model, limit)

    def validate_policy(self, model: str, policy: RoutingPolicy, note: str = "") -> None:
        """Every check ``set_policy`` makes, writing nothing (a gate runs them first)."""
        validate_name(model, "model name")
        policies.check_policy(policy)
        policies.check_note(note)
        with self._lock:
            self._require_model(model)
            self._check_references(model, policy)

    # ---- pending policies (registry.policies.gate decides when one is applied) -----------

    def stage_policy(
        self, model: str, policy: RoutingPolicy, note: str, deadline_unix_ms: int
    ) -> PendingPolicy:
        """Keep ``policy`` as the model's pending policy (replacing any other): workers load
        its versions, and the gate applies it once they are READY."""
        validate_name(model, "model name")
        policies.check_policy(policy)
        policies.check_note(note)
        with self._lock:
            self._require_model(model)
            self._check_references(model, policy)
            now_ms = int(time.time() * 1000)
            with self._transaction(model) as conn:
                conn.execute(
                    "INSERT INTO pending_policies VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (model) DO UPDATE SET policy_json = excluded.policy_json, "
                    "note = excluded.note, state = excluded.state, reason = excluded.reason, "
                    "created_unix_ms = excluded.created_unix_ms, "
                    "deadline_unix_ms = excluded.deadline_unix_ms",
                    (model, policies.to_json(policy), note, WAITING, "", now_ms, deadline_unix_ms),
                )
            found = self._pending_of(model)
            assert found is not None
            return found

    def waiting_policies(self) -> list[PendingPolicy]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM pending_policies WHERE state = ? ORDER BY model", (WAITING,)
            ).fetchall()
            return [_pending_from_row(r) for r in rows]

    def apply_pending(self, model: str, created_unix_ms: int) -> PolicyRevision | None:
        """Put the waiting policy staged at ``created_unix_ms`` in force (None: it is gone or
        was replaced meanwhile, so there is nothing to apply)."""
        with self._lock:
            found = self._pending_of(model)
            if found is None or found.state != WAITING or found.created_unix_ms != created_unix_ms:
                return None
            return self._write_policy(model, found.policy, found.note or "pending policy applied")

    def fail_pending(self, model: str, created_unix_ms: int, reason: str) -> None:
        with self._lock:
            found = self._pending_of(model)
            if found is None or found.state != WAITING or found.created_unix_ms != created_unix_ms:
                return
            with self._transaction(model) as conn:
                conn.execute(
                    "UPDATE pending_policies SET state = ?, reason = ? WHERE model = ?",
                    (FAILED, reason[:1000], model),
                )

    def routed_versions(self, model: str, policy: RoutingPolicy) -> set[int]:
        """The versions ``policy`` sends callers to, labels resolved now (its shadow is not
        among them: a shadow's failures never reach a caller)."""
        with self._lock:
            labels = self._labels_of(model)
            # A lookup version has no worker: routers answer it from the feature store.
            lookups = {
                r[0]
                for r in self._db.execute(
                    "SELECT version FROM versions WHERE model = ? AND platform = ?",
                    (model, LOOKUP_PLATFORM),
                )
            }
        found = {s.version for s in policy.split if s.version}
        found |= {labels[s.label] for s in policy.split if s.label in labels}
        if policy.target_label in labels:
            found.add(labels[policy.target_label])
        return found - lookups

    def _pending_of(self, model: str) -> PendingPolicy | None:
        row = self._db.execute(
            "SELECT * FROM pending_policies WHERE model = ?", (model,)
        ).fetchone()
        return None if row is None else _pending_from_row(row)

    def _pending_policies(self, model: str | None) -> dict[str, PendingPolicy]:
        where, args = ("WHERE model = ?", (model,)) if model is not None else ("", ())
        rows = self._db.execute(f"SELECT * FROM pending_policies {where}", args)
        return {r["model"]: _pending_from_row(r) for r in rows}

    def _check_references(self, model: str, policy: RoutingPolicy) -> None:
        versions = {
            r[0] for r in self._db.execute("SELECT version FROM versions WHERE model = ?", (model,))
        }
        policies.check_references(model, policy, versions, self._labels_of(model))

    def _write_policy(self, model: str, policy: RoutingPolicy, note: str) -> PolicyRevision:
        """Write ``policy`` as the next revision; a policy written in force replaces any
        pending one (the caller's latest word wins)."""
        now = self._current_policy(model)
        pending = self._pending_of(model)
        if now is not None and now.policy == policy and pending is None:
            return now  # already so: not a change, no new revision
        if now is None and policy.empty and pending is None:
            return PolicyRevision(model=model, revision=0, policy=policy)
        self._check_references(model, policy)
        if policy.routes:
            policy = dataclasses.replace(policy, fallback_version=self._served_now(model))
        with self._transaction(model) as conn:
            conn.execute("DELETE FROM pending_policies WHERE model = ?", (model,))
            if now is None or now.policy != policy or now.policy.empty:
                revision = policies.insert(conn, model, policy, note, int(time.time() * 1000))
            else:
                revision = now.revision
        written = policies.at_revision(self._db, model, revision)
        assert written is not None
        return written

    def _served_now(self, model: str) -> int:
        """The version a request without version or label gets now (the policy's default,
        else production, else the newest): where a new policy's failing share falls back."""
        found = self._policy_default(model)
        if found:
            return found
        row = self._db.execute(
            "SELECT version FROM labels WHERE model = ? AND label = ?", (model, PRODUCTION)
        ).fetchone()
        if row is not None:
            return int(row[0])
        row = self._db.execute(
            "SELECT MAX(version) FROM versions WHERE model = ?", (model,)
        ).fetchone()
        return int(row[0] or 0)

    def _current_policy(self, model: str) -> PolicyRevision | None:
        return policies.current(self._db, model).get(model)

    def _current_policies(self, model: str | None) -> dict[str, PolicyRevision]:
        return policies.current(self._db, model)

    def _policy_default(self, model: str) -> int | None:
        """The version the policy in force gives a lookup by neither version nor label (its
        target label, else its largest share); None when no policy is in force."""
        now = self._current_policy(model)
        if now is None or not now.policy.routes:  # none, cleared, or only a shadow
            return None
        return policies.default_version(now.policy, self._labels_of(model))

    def _labels_of(self, model: str) -> dict[str, int]:
        rows = self._db.execute("SELECT label, version FROM labels WHERE model = ?", (model,))
        return {r[0]: r[1] for r in rows}


def _pending_from_row(row: Row) -> PendingPolicy:
    return PendingPolicy(
        model=row["model"],
        policy=policies.from_json(row["policy_json"]),
        note=row["note"],
        state=row["state"],
        reason=row["reason"],
        created_unix_ms=row["created_unix_ms"],
        deadline_unix_ms=row["deadline_unix_ms"],
    )
