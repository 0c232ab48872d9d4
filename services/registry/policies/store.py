"""RegistryStore's routing-policy methods, kept beside it as a mixin: they use the store's
lock, connection and transaction, so a policy change is one more committed registry change,
announced to watchers with the model it touched (the ``policies`` insert trigger). The rules a
policy follows and its rows are in ``registry.policies.rules``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from modelserve.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from modelserve.names import validate_name
from registry.policies import rules as policies
from registry.records import PolicyRevision, RoutingPolicy


class PolicyStoreMethods:
    if TYPE_CHECKING:  # provided by RegistryStore
        _lock: threading.RLock
        _conn: sqlite3.Connection

        def _require_model(self, model: str) -> None: ...
        def _transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

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
            found = policies.at_revision(self._conn, model, target) if target else None
            restored = found.policy if found is not None else RoutingPolicy()
            return self._write_policy(model, restored, f"rollback to revision {target}")

    def policy_history(self, model: str, limit: int = 0) -> tuple[PolicyRevision, ...]:
        """The newest ``limit`` (0 = 100) policy revisions of ``model``, oldest first."""
        validate_name(model, "model name")
        limit = policies.check_history_limit(limit)
        with self._lock:
            self._require_model(model)
            return policies.history(self._conn, model, limit)

    def _write_policy(self, model: str, policy: RoutingPolicy, note: str) -> PolicyRevision:
        now = self._current_policy(model)
        if now is not None and now.policy == policy:
            return now  # already so: not a change, no new revision
        if now is None and policy.empty:
            return PolicyRevision(model=model, revision=0, policy=policy)
        versions = {
            r[0]
            for r in self._conn.execute("SELECT version FROM versions WHERE model = ?", (model,))
        }
        policies.check_references(model, policy, versions, self._labels_of(model))
        with self._transaction() as conn:
            revision = policies.insert(conn, model, policy, note, int(time.time() * 1000))
        written = policies.at_revision(self._conn, model, revision)
        assert written is not None
        return written

    def _current_policy(self, model: str) -> PolicyRevision | None:
        return policies.current(self._conn, model).get(model)

    def _current_policies(self, model: str | None) -> dict[str, PolicyRevision]:
        return policies.current(self._conn, model)

    def _policy_default(self, model: str) -> int | None:
        """The version the policy in force gives a lookup by neither version nor label (its
        target label, else its largest share); None when no policy is in force."""
        now = self._current_policy(model)
        if now is None or not now.policy.routes:  # none, cleared, or only a shadow
            return None
        return policies.default_version(now.policy, self._labels_of(model))

    def _labels_of(self, model: str) -> dict[str, int]:
        rows = self._conn.execute("SELECT label, version FROM labels WHERE model = ?", (model,))
        return {r[0]: r[1] for r in rows}
