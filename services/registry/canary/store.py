"""Canaries and their decisions in SQLite (``canaries.sqlite3`` in the registry's data dir), or
in the registry's PostgreSQL database (``registry_database_url``).

Kept apart from the model tables so canaries can evolve without a model-schema migration.
Business outcomes are sufficient statistics per (canary, version, metric): count, sum, sum of
squares and, on the candidate's row, the smallest always-valid p-value seen so far; only the
canary's own metric and its two versions are accepted, so storage is two rows a canary
whatever the traffic.
Every call runs on the registry's single store thread (the controller and the servicer both
go through it), so one connection serves all calls in order.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

from modelserve.catalog import routing
from modelserve.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from registry.canary.gates import (
    RUNNING,
    Arm,
    CanarySpec,
    CanaryState,
    Decision,
    MetricFigures,
    metric_figures,
)
from registry.db import Migration, Row, apply_migrations, open_database
from registry.experiments import sequential_test as st

COMPONENT = "canaries"
MIGRATIONS = (
    Migration(
        1,
        "canaries, decisions, outcomes",
        (
            "CREATE TABLE IF NOT EXISTS canaries (id {serial}, model TEXT NOT NULL,"
            " spec TEXT NOT NULL, state TEXT NOT NULL, step_index INTEGER NOT NULL,"
            " started_unix_ms BIGINT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS canaries_model ON canaries (model, id)",
            "CREATE TABLE IF NOT EXISTS canary_decisions (canary_id BIGINT NOT NULL,"
            " seq {serial}, decision TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS canary_decisions_by ON canary_decisions (canary_id, seq)",
            "CREATE TABLE IF NOT EXISTS canary_outcomes (canary_id BIGINT NOT NULL,"
            " version INTEGER NOT NULL, metric TEXT NOT NULL, count BIGINT NOT NULL,"
            " total {float} NOT NULL, total_sq {float} NOT NULL, min_p {float} NOT NULL,"
            " PRIMARY KEY (canary_id, version, metric))",
        ),
    ),
)


class CanaryStore:
    def __init__(self, path: Path, *, database_url: str = "") -> None:
        """SQLite at ``path`` unless ``database_url`` names the shared PostgreSQL database.

        One commit per business outcome: on SQLite, WAL without a sync per commit keeps that
        cheap (as for experiments); a crash may lose the last outcomes, never the file."""
        self._conn = open_database(database_url, path, synchronous="NORMAL")
        apply_migrations(self._conn, COMPONENT, MIGRATIONS)

    def close(self) -> None:
        self._conn.close()

    def start(self, spec: CanarySpec, first: Decision) -> int:
        """A new running canary of ``spec.model`` (FAILED_PRECONDITION if one runs)."""
        with self._conn.transaction():
            running = self._conn.execute(
                "SELECT id FROM canaries WHERE model = ? AND state = ?", (spec.model, RUNNING)
            ).fetchone()
            if running is not None:
                raise FailedPreconditionError(
                    f"model {spec.model!r} already has a running canary; abort it first "
                    "(modelserve canary abort MODEL)"
                )
            row = self._conn.execute(
                "INSERT INTO canaries (model, spec, state, step_index, started_unix_ms) "
                "VALUES (?, ?, ?, 0, ?) RETURNING id",
                (spec.model, json.dumps(dataclasses.asdict(spec)), RUNNING, _now_ms()),
            ).fetchone()
            canary_id = int(row[0])
            self._insert_decision(canary_id, first)
        return canary_id

    def record(
        self, canary_id: int, decision: Decision, *, state: str = "", step_index: int = -1
    ) -> None:
        """Store a decision and, when given, the canary's new state and step."""
        with self._conn.transaction():
            self._insert_decision(canary_id, decision)
            if state:
                self._conn.execute("UPDATE canaries SET state = ? WHERE id = ?", (state, canary_id))
            if step_index >= 0:
                self._conn.execute(
                    "UPDATE canaries SET step_index = ? WHERE id = ?", (step_index, canary_id)
                )

    def running(self) -> list[tuple[int, CanaryState]]:
        rows = self._conn.execute(
            "SELECT * FROM canaries WHERE state = ? ORDER BY id", (RUNNING,)
        ).fetchall()
        return [(int(r["id"]), _state(r, [])) for r in rows]

    def latest(self, model: str, limit: int = 0) -> tuple[int, CanaryState]:
        """The model's most recent canary with its last ``limit`` decisions (0 = all)."""
        row = self._conn.execute(
            "SELECT * FROM canaries WHERE model = ? ORDER BY id DESC LIMIT 1", (model,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"model {model!r} has had no canary")
        last = f"LIMIT {int(limit)}" if limit > 0 else ""  # SQLite's "LIMIT -1" is not portable
        decisions = self._conn.execute(
            f"SELECT decision FROM canary_decisions WHERE canary_id = ? ORDER BY seq DESC {last}",
            (row["id"],),
        ).fetchall()
        return int(row["id"]), _state(row, [_decision(d["decision"]) for d in reversed(decisions)])

    def record_outcome(
        self, model: str, version: int, routing_key: str, metric: str, value: float
    ) -> tuple[int, int]:
        """Add one business outcome to the arm it belongs to: ``version`` as the answer
        carried it, or the arm ``routing_key`` goes to under the split in force now. Returns
        (the version, its outcomes so far)."""
        if not math.isfinite(value):
            raise InvalidArgumentError(f"outcome value must be a finite number; got {value}")
        if bool(version) == bool(routing_key):
            raise InvalidArgumentError("an outcome needs a version or a routing key, not both")
        with self._conn.transaction():
            canary_id, state = self.latest(model, 1)
            spec = state.spec
            if state.state != RUNNING:
                raise FailedPreconditionError(
                    f"the latest canary of {model!r} is not running (it is {state.state})"
                )
            if not spec.business_metric:
                raise FailedPreconditionError(f"the canary of {model!r} names no business metric")
            if metric != spec.business_metric:
                raise InvalidArgumentError(
                    f"the canary of {model!r} judges {spec.business_metric!r}; got {metric!r}"
                )
            if routing_key:
                version = arm_of_key(spec, state.step_index, routing_key)
            elif version not in (spec.baseline, spec.candidate):
                raise InvalidArgumentError(
                    f"the canary of {model!r} compares versions {spec.baseline} and "
                    f"{spec.candidate}; got {version}"
                )
            moments = self._moments(canary_id, metric)
            moments[version] = moments.get(version, st.Moments()).add(value)
            self._write_moments(canary_id, version, metric, moments[version])
            base, cand = moments.get(spec.baseline), moments.get(spec.candidate)
            if base is not None and cand is not None:  # the running minimum of every look
                p = metric_figures(spec, base, cand).p_value
                self._conn.execute(
                    "UPDATE canary_outcomes SET min_p = CASE WHEN min_p < ? THEN min_p ELSE ? END "
                    "WHERE canary_id = ? AND version = ? AND metric = ?",
                    (p, p, canary_id, spec.candidate, metric),
                )
            return version, moments[version].count

    def metric(self, canary_id: int, spec: CanarySpec) -> MetricFigures | None:
        """The canary's business metric so far (None when it names none)."""
        if not spec.business_metric:
            return None
        moments = self._moments(canary_id, spec.business_metric)
        row = self._conn.execute(
            "SELECT min_p FROM canary_outcomes WHERE canary_id = ? AND version = ? AND metric = ?",
            (canary_id, spec.candidate, spec.business_metric),
        ).fetchone()
        return metric_figures(
            spec,
            moments.get(spec.baseline, st.Moments()),
            moments.get(spec.candidate, st.Moments()),
            float(row["min_p"]) if row is not None else 1.0,
        )

    def _moments(self, canary_id: int, metric: str) -> dict[int, st.Moments]:
        rows = self._conn.execute(
            "SELECT version, count, total, total_sq FROM canary_outcomes "
            "WHERE canary_id = ? AND metric = ?",
            (canary_id, metric),
        ).fetchall()
        return {
            int(r["version"]): st.Moments(int(r["count"]), r["total"], r["total_sq"]) for r in rows
        }

    def _write_moments(
        self, canary_id: int, version: int, metric: str, moments: st.Moments
    ) -> None:
        self._conn.execute(
            "INSERT INTO canary_outcomes "
            "(canary_id, version, metric, count, total, total_sq, min_p) "
            "VALUES (?, ?, ?, ?, ?, ?, 1.0) ON CONFLICT (canary_id, version, metric) DO UPDATE "
            "SET count = excluded.count, total = excluded.total, total_sq = excluded.total_sq",
            (canary_id, version, metric, moments.count, moments.total, moments.total_sq),
        )

    def _insert_decision(self, canary_id: int, decision: Decision) -> None:
        self._conn.execute(
            "INSERT INTO canary_decisions (canary_id, decision) VALUES (?, ?)",
            (canary_id, json.dumps(dataclasses.asdict(decision))),
        )


def _state(row: Row, decisions: list[Decision]) -> CanaryState:
    data: dict[str, Any] = json.loads(row["spec"])
    # JSON has no tuples; fields added since a row was written take their defaults.
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    spec = CanarySpec(**fields)
    return CanaryState(
        spec=spec,
        state=row["state"],
        step_index=int(row["step_index"]),
        started_unix_ms=int(row["started_unix_ms"]),
        decisions=decisions,
    )


def _decision(text: str) -> Decision:
    data = json.loads(text)
    metric = data.get("metric")
    return Decision(
        **{
            **data,
            "baseline": Arm(**data["baseline"]),
            "candidate": Arm(**data["candidate"]),
            "metric": MetricFigures(**metric) if metric else None,
        }
    )


def arm_of_key(spec: CanarySpec, step_index: int, key: str) -> int:
    """The version routing ``key`` goes to under the canary's split at ``step_index``: the
    gateway's own bucketing (``routing.bucket_of``/``pick``) of the split the controller
    wrote. Keys only ever move from baseline to candidate as the steps rise, so the one
    mistake possible is an outcome posted after its key moved counted for the candidate
    (posting the answer's ``model_version`` instead has none)."""
    points = routing.basis_points(spec.steps[step_index])
    shares = [
        routing.Share(version, "", weight)
        for version, weight in ((spec.baseline, routing.BUCKETS - points), (spec.candidate, points))
        if weight > 0
    ]
    return routing.pick(shares, routing.bucket_of(spec.model, key)).version


def _now_ms() -> int:
    return int(time.time() * 1000)
