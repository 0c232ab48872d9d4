"""The registry's A/B experiments: definitions and per-arm outcome statistics in their own
SQLite file, routing through the model's policy (``RegistryStore.set_policy``, so every change
is a policy revision pushed by Watch), and guard rails checked on every outcome.

Outcomes are kept as sufficient statistics per (experiment, arm, metric): count, sum, sum of
squares and the smallest always-valid p-value seen so far; storage does not grow with traffic.
Like composites, experiments live beside the model tables rather than in them: starting one is
two writes (the policy, then the experiment), and a crash between them leaves a split with no
experiment, which ``policy clear`` or a new start repairs.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from modelserve.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from modelserve.names import validate_name
from modelserve.proto.modelserve.v1 import experiments_pb2 as xpb
from registry.db import Database, Migration, apply_migrations, open_database
from registry.experiments import rules
from registry.experiments import sequential_test as st

if TYPE_CHECKING:
    from registry.store import RegistryStore

log = logging.getLogger(__name__)

COMPONENT = "experiments"
MIGRATIONS = (
    Migration(
        1,
        "experiments, outcomes",
        (
            "CREATE TABLE IF NOT EXISTS experiments (name TEXT PRIMARY KEY, body {blob} NOT NULL)",
            "CREATE TABLE IF NOT EXISTS outcomes (experiment TEXT NOT NULL, arm TEXT NOT NULL,"
            " metric TEXT NOT NULL, count BIGINT NOT NULL, total {float} NOT NULL,"
            " total_sq {float} NOT NULL, min_p {float} NOT NULL,"
            " PRIMARY KEY (experiment, arm, metric))",
        ),
    ),
)
MAX_METRICS = 32  # per experiment: metrics are names chosen by callers, so bound them
Stats = dict[tuple[str, str], tuple[st.Moments, float]]  # (arm, metric) -> moments, min p


class ExperimentStore:
    """Experiments by name; every method blocks (SQLite): call them off the event loop."""

    def __init__(self, path: Path, models: RegistryStore, *, database_url: str = "") -> None:
        """SQLite at ``path`` unless ``database_url`` names the shared PostgreSQL database.

        One commit per outcome: on SQLite, WAL without a sync per commit keeps that cheap; a
        crash may lose the last outcomes, never the file, which is fine for aggregates."""
        self._models = models
        self._lock = threading.Lock()
        self._conn = open_database(database_url, path, synchronous="NORMAL")
        apply_migrations(self._conn, COMPONENT, MIGRATIONS)

    @property
    def models(self) -> RegistryStore:
        return self._models

    def close(self) -> None:
        self._conn.close()

    def start(self, experiment: xpb.Experiment) -> xpb.Experiment:
        rules.check(experiment)
        with self._lock:
            if self._find(experiment.name) is not None:
                raise AlreadyExistsError(f"experiment {experiment.name!r} already exists")
            for other in self._all():
                if other.model == experiment.model and other.state == xpb.Experiment.RUNNING:
                    raise FailedPreconditionError(
                        f"model {experiment.model!r} already runs experiment {other.name!r}"
                    )
            started = xpb.Experiment(
                name=experiment.name,
                model=experiment.model,
                arms=experiment.arms,
                guard_rails=experiment.guard_rails,
                alpha=rules.alpha_of(experiment),
                state=xpb.Experiment.RUNNING,
                started_unix_ms=int(time.time() * 1000),
            )
            # The policy first: it checks the model and the arms' versions and labels.
            self._models.set_policy(
                started.model, rules.split_policy(started), f"experiment {started.name}"
            )
            self._save(started)
            return started

    def require_new(self, name: str) -> None:
        """ALREADY_EXISTS when ``name`` is taken (checked again, atomically, by ``start``)."""
        validate_name(name, "experiment name")
        with self._lock:
            if self._find(name) is not None:
                raise AlreadyExistsError(f"experiment {name!r} already exists")

    def stop(self, name: str, reason: str = "") -> xpb.Experiment:
        with self._lock:
            return self._stop(self._require(name), reason or "stopped by hand")

    def get(self, name: str) -> xpb.Experiment:
        with self._lock:
            return self._require(name)

    def listed(self) -> list[xpb.Experiment]:
        with self._lock:
            return self._all()

    def record(
        self, name: str, key: str, arm: str, metric: str, value: float
    ) -> tuple[str, xpb.Experiment]:
        """Add one outcome to its arm; returns the arm and the experiment (STOPPED when this
        outcome tripped a guard rail)."""
        validate_name(metric, "metric")
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidArgumentError(f"outcome value must be a finite number; got {value}")
        with self._lock:
            experiment = self._require(name)
            if experiment.state != xpb.Experiment.RUNNING:
                raise FailedPreconditionError(
                    f"experiment {name!r} is stopped ({experiment.stop_reason})"
                )
            arm = self._arm_for(experiment, key, arm)
            stats = self._stats(name)
            if metric not in {m for _, m in stats} and len({m for _, m in stats}) >= MAX_METRICS:
                raise FailedPreconditionError(
                    f"experiment {name!r} already has {MAX_METRICS} metrics; {metric!r} is one more"
                )
            moments, min_p = stats.get((arm, metric), (st.Moments(), 1.0))
            stats[(arm, metric)] = (moments.add(value), min_p)
            stats = self._with_p_values(experiment, stats, metric)
            self._write_stats(name, stats, metric)
            breach = _guard_breach(experiment, stats, arm, metric)
            if breach:
                experiment = self._stop(experiment, breach)
            return arm, experiment

    def report(self, name: str) -> xpb.ExperimentReport:
        with self._lock:
            experiment = self._require(name)
            stats = self._stats(name)
        alpha = rules.alpha_of(experiment)
        control = experiment.arms[0].name
        rows = []
        for metric in sorted({m for _, m in stats}):
            base = stats.get((control, metric), (st.Moments(), 1.0))[0]
            for arm in rules.arm_names(experiment):
                moments, min_p = stats.get((arm, metric), (st.Moments(), 1.0))
                low, high = st.mean_interval(moments)
                row = xpb.ArmMetric(
                    arm=arm,
                    metric=metric,
                    count=moments.count,
                    mean=moments.mean,
                    ci_low=low,
                    ci_high=high,
                    is_control=arm == control,
                )
                if arm != control:
                    found = st.compare(base, moments, alpha)
                    row.difference = found.difference
                    row.difference_low, row.difference_high = found.low, found.high
                    row.p_value = min_p
                    row.significant = min_p < alpha
                rows.append(row)
        return xpb.ExperimentReport(experiment=experiment, metrics=rows)

    def _arm_for(self, experiment: xpb.Experiment, key: str, arm: str) -> str:
        if bool(key) == bool(arm):
            raise InvalidArgumentError("an outcome needs a routing key or an arm, not both")
        if key:
            return rules.arm_of_key(experiment, key)
        if arm not in rules.arm_names(experiment):
            raise InvalidArgumentError(
                f"experiment {experiment.name!r} has arms {rules.arm_names(experiment)}; "
                f"got {arm!r}"
            )
        return arm

    def _with_p_values(self, experiment: xpb.Experiment, stats: Stats, metric: str) -> Stats:
        """Every treatment's running-minimum p-value of ``metric`` after the new outcome: the
        minimum over all looks is what stays valid (and it never flips back)."""
        control = experiment.arms[0].name
        base = stats.get((control, metric), (st.Moments(), 1.0))[0]
        alpha = rules.alpha_of(experiment)
        for arm in rules.arm_names(experiment)[1:]:
            if (arm, metric) in stats:
                moments, min_p = stats[(arm, metric)]
                p = st.compare(base, moments, alpha).p_value
                stats[(arm, metric)] = (moments, min(min_p, p))
        return stats

    def _stop(self, experiment: xpb.Experiment, reason: str) -> xpb.Experiment:
        if experiment.state == xpb.Experiment.STOPPED:
            return experiment
        self._models.set_policy(
            experiment.model,
            rules.control_policy(experiment),
            f"experiment {experiment.name} stopped: {reason}"[:1000],
        )
        stopped = xpb.Experiment()
        stopped.CopyFrom(experiment)
        stopped.state = xpb.Experiment.STOPPED
        stopped.stop_reason = reason
        stopped.stopped_unix_ms = int(time.time() * 1000)
        self._save(stopped)
        # Stopping moves production traffic back to the control: worth a line each time.
        log.warning("experiment %s on %s stopped: %s", stopped.name, stopped.model, reason)
        return stopped

    def _require(self, name: str) -> xpb.Experiment:
        validate_name(name, "experiment name")
        found = self._find(name)
        if found is None:
            raise NotFoundError(f"unknown experiment {name!r}")
        return found

    def _find(self, name: str) -> xpb.Experiment | None:
        row = self._conn.execute("SELECT body FROM experiments WHERE name = ?", (name,)).fetchone()
        return xpb.Experiment.FromString(bytes(row[0])) if row else None

    def _all(self) -> list[xpb.Experiment]:
        rows = self._conn.execute("SELECT body FROM experiments ORDER BY name")
        return [xpb.Experiment.FromString(bytes(r[0])) for r in rows]

    def _save(self, experiment: xpb.Experiment) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO experiments (name, body) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET body = excluded.body",
                (experiment.name, experiment.SerializeToString(deterministic=True)),
            )

    def _stats(self, name: str) -> Stats:
        rows = self._conn.execute(
            "SELECT arm, metric, count, total, total_sq, min_p FROM outcomes WHERE experiment = ?",
            (name,),
        )
        return {(r[0], r[1]): (st.Moments(r[2], r[3], r[4]), r[5]) for r in rows}

    def _write_stats(self, name: str, stats: Stats, metric: str) -> None:
        with self._transaction() as conn:
            for (arm, m), (moments, min_p) in stats.items():
                if m != metric:
                    continue
                conn.execute(
                    "INSERT INTO outcomes VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (experiment, arm, metric) DO UPDATE SET count = excluded.count, "
                    "total = excluded.total, total_sq = excluded.total_sq, min_p = excluded.min_p",
                    (name, arm, m, moments.count, moments.total, moments.total_sq, min_p),
                )

    def _transaction(self) -> AbstractContextManager[Database]:
        return self._conn.transaction()


def _guard_breach(experiment: xpb.Experiment, stats: Stats, arm: str, metric: str) -> str:
    """Why ``arm`` breaks a guard rail on ``metric`` ("" if it does not). Only treatments are
    guarded: stopping sends traffic to the control, which cannot get away from itself. A
    breach needs the arm's always-valid confidence sequence wholly past the bound, so a few
    unlucky outcomes do not stop an experiment, however often it is checked."""
    if arm == experiment.arms[0].name or (arm, metric) not in stats:
        return ""
    moments = stats[(arm, metric)][0]
    low, high = st.mean_sequence(moments, rules.alpha_of(experiment))
    for guard in experiment.guard_rails:
        if guard.metric != metric:
            continue
        where = f"arm {arm!r} {metric} mean {moments.mean:.4g} over {moments.count} outcomes"
        if guard.HasField("max_mean") and low > guard.max_mean:
            return f"guard rail {metric}<={guard.max_mean:g} broken: {where} (>= {low:.4g})"
        if guard.HasField("min_mean") and high < guard.min_mean:
            return f"guard rail {metric}>={guard.min_mean:g} broken: {where} (<= {high:.4g})"
    return ""
