"""Canaries and their decisions in SQLite (``canaries.sqlite3`` in the registry's data dir).

Kept apart from the model tables so canaries can evolve without a model-schema migration.
Every call runs on the registry's single store thread (the controller and the servicer both
go through it), so one connection serves all calls in order.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from modelserve.errors import FailedPreconditionError, NotFoundError
from registry.canary.gates import RUNNING, Arm, CanarySpec, CanaryState, Decision

_SCHEMA = """
CREATE TABLE IF NOT EXISTS canaries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    step_index INTEGER NOT NULL,
    started_unix_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS canaries_model ON canaries (model, id);
CREATE TABLE IF NOT EXISTS canary_decisions (
    canary_id INTEGER NOT NULL,
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    decision TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS canary_decisions_by ON canary_decisions (canary_id, seq);
"""


class CanaryStore:
    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def start(self, spec: CanarySpec, first: Decision) -> int:
        """A new running canary of ``spec.model`` (FAILED_PRECONDITION if one runs)."""
        with self._conn:
            running = self._conn.execute(
                "SELECT id FROM canaries WHERE model = ? AND state = ?", (spec.model, RUNNING)
            ).fetchone()
            if running is not None:
                raise FailedPreconditionError(
                    f"model {spec.model!r} already has a running canary; abort it first "
                    "(modelserve canary abort MODEL)"
                )
            cursor = self._conn.execute(
                "INSERT INTO canaries (model, spec, state, step_index, started_unix_ms) "
                "VALUES (?, ?, ?, 0, ?)",
                (spec.model, json.dumps(dataclasses.asdict(spec)), RUNNING, _now_ms()),
            )
            canary_id = int(cursor.lastrowid or 0)
            self._insert_decision(canary_id, first)
        return canary_id

    def record(
        self, canary_id: int, decision: Decision, *, state: str = "", step_index: int = -1
    ) -> None:
        """Store a decision and, when given, the canary's new state and step."""
        with self._conn:
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
        decisions = self._conn.execute(
            "SELECT decision FROM canary_decisions WHERE canary_id = ? ORDER BY seq DESC LIMIT ?",
            (row["id"], limit if limit > 0 else -1),
        ).fetchall()
        return int(row["id"]), _state(row, [_decision(d["decision"]) for d in reversed(decisions)])

    def _insert_decision(self, canary_id: int, decision: Decision) -> None:
        self._conn.execute(
            "INSERT INTO canary_decisions (canary_id, decision) VALUES (?, ?)",
            (canary_id, json.dumps(dataclasses.asdict(decision))),
        )


def _state(row: sqlite3.Row, decisions: list[Decision]) -> CanaryState:
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
    return Decision(
        **{**data, "baseline": Arm(**data["baseline"]), "candidate": Arm(**data["candidate"])}
    )


def _now_ms() -> int:
    return int(time.time() * 1000)
