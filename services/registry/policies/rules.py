"""Routing policies in the registry: the rules a policy must follow, and its rows.

A policy is checked twice before it is stored: its shape (INVALID_ARGUMENT: weights, names,
duplicates) and what it refers to (FAILED_PRECONDITION: versions and labels the model has
now). A refused change stores nothing, so the policy in force stays in force. Policies are
append-only: every change, rollback included, is a new revision of the model's history.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from modelserve.catalog.routing import BUCKETS, Share, primary
from modelserve.errors import FailedPreconditionError, InvalidArgumentError
from modelserve.names import validate_name
from registry.db import Database, Row
from registry.records import PolicyRevision, RoutingPolicy, ShadowTarget, SplitShare

MAX_SPLIT_TARGETS = 16
MAX_NOTE_CHARS = 256
DEFAULT_HISTORY = 100
MAX_HISTORY = 1000


def check_policy(policy: RoutingPolicy) -> None:
    """The shape of a policy to set: one kind, valid names, weights that sum to 100%."""
    if policy.split and policy.target_label:
        raise InvalidArgumentError("give a split or a target label, not both")
    if policy.empty:
        raise InvalidArgumentError(
            "the policy is empty: give a split, a target label or a shadow "
            "(ClearPolicy removes a policy)"
        )
    if policy.shadow is not None:
        check_shadow(policy.shadow)
    if policy.target_label:
        validate_name(policy.target_label, "target label")
        return
    if not policy.split:
        return  # only a shadow, on top of the default resolution
    if len(policy.split) > MAX_SPLIT_TARGETS:
        raise InvalidArgumentError(
            f"a split may have at most {MAX_SPLIT_TARGETS} targets; got {len(policy.split)}"
        )
    seen: set[tuple[int, str]] = set()
    for index, share in enumerate(policy.split):
        _check_share(index, share)
        if (share.version, share.label) in seen:
            raise InvalidArgumentError(f"the split names {share.describe()} twice")
        seen.add((share.version, share.label))
    total = sum(s.basis_points for s in policy.split)
    if total != BUCKETS:
        raise InvalidArgumentError(
            f"split weights sum to {_percent(total)}%; they must sum to exactly 100%"
        )


def check_shadow(shadow: ShadowTarget) -> None:
    if not shadow.target:
        raise InvalidArgumentError("the shadow names no target: give a version number or a label")
    if not shadow.version:
        validate_name(shadow.target, "shadow target label")
    # `not <= ` also refuses NaN, which compares false with everything.
    if not 0 < shadow.fraction <= 1:
        raise InvalidArgumentError(f"shadow fraction must be in (0, 1]; got {shadow.fraction:g}")
    if not 0 <= shadow.agreement_tolerance < float("inf"):
        raise InvalidArgumentError(
            "shadow agreement_tolerance must be a finite number >= 0 (0 = the default); "
            f"got {shadow.agreement_tolerance:g}"
        )


def _check_share(index: int, share: SplitShare) -> None:
    where = f"split target {index}"
    if share.version < 0:
        raise InvalidArgumentError(f"{where}: version must be >= 1; got {share.version}")
    if share.version and share.label:
        raise InvalidArgumentError(
            f"{where}: give a version or a label, not both; got version {share.version} "
            f"and label {share.label!r}"
        )
    if not share.version and not share.label:
        raise InvalidArgumentError(f"{where}: names neither a version nor a label")
    if share.label:
        validate_name(share.label, "label")
    if share.basis_points < 0:
        raise InvalidArgumentError(
            f"{where} ({share.describe()}): weight {_percent(share.basis_points)}% is negative"
        )


def check_references(
    model: str, policy: RoutingPolicy, versions: Collection[int], labels: Mapping[str, int]
) -> None:
    """Every version and label the policy names exists now (FAILED_PRECONDITION if not)."""
    for share in policy.split:
        if share.version and share.version not in versions:
            have = ", ".join(str(v) for v in sorted(versions)) or "none"
            raise FailedPreconditionError(
                f"the policy routes to version {share.version}, which model {model!r} does "
                f"not have (versions: {have})"
            )
    shadow = policy.shadow.version if policy.shadow is not None else 0
    if shadow and shadow not in versions:
        have = ", ".join(str(v) for v in sorted(versions)) or "none"
        raise FailedPreconditionError(
            f"the policy mirrors to version {shadow}, which model {model!r} does not have "
            f"(versions: {have})"
        )
    for label in sorted(policy.labels()):
        if label not in labels:
            have = ", ".join(sorted(labels)) or "none"
            raise FailedPreconditionError(
                f"the policy routes to label {label!r}, which model {model!r} does not have "
                f"(labels: {have}); set the label first"
            )


def check_note(note: str) -> None:
    if len(note) > MAX_NOTE_CHARS:
        raise InvalidArgumentError(
            f"note must be at most {MAX_NOTE_CHARS} characters; got {len(note)}"
        )


def check_history_limit(limit: int) -> int:
    if limit < 0 or limit > MAX_HISTORY:
        raise InvalidArgumentError(f"limit must be 0-{MAX_HISTORY} (0 = 100); got {limit}")
    return limit or DEFAULT_HISTORY


def default_version(policy: RoutingPolicy, labels: Mapping[str, int]) -> int:
    """The version a lookup that is not routing a request resolves to (as
    ``modelserve.catalog.replica.resolve_version``: the target label, else the largest share)."""
    if policy.target_label:
        return labels[policy.target_label]
    top = primary([Share(s.version, s.label, s.basis_points) for s in policy.split])
    return top.version or labels[top.label]


# ---- rows ------------------------------------------------------------------------------------


def to_json(policy: RoutingPolicy) -> str:
    data: dict[str, Any] = {
        "split": [
            {"version": s.version, "label": s.label, "basis_points": s.basis_points}
            for s in policy.split
        ],
        "target_label": policy.target_label,
    }
    if policy.fallback_version:  # absent when unset: rows written before stay equal
        data["fallback_version"] = policy.fallback_version
    if policy.shadow is not None:  # absent rather than null: rows written before stay equal
        data["shadow"] = {
            "target": policy.shadow.target,
            "fraction": policy.shadow.fraction,
            "agreement_tolerance": policy.shadow.agreement_tolerance,
        }
    return json.dumps(data, sort_keys=True)


def from_json(text: str) -> RoutingPolicy:
    data: dict[str, Any] = json.loads(text)
    return RoutingPolicy(
        split=tuple(
            SplitShare(version=s["version"], label=s["label"], basis_points=s["basis_points"])
            for s in data.get("split", ())
        ),
        target_label=data.get("target_label", ""),
        shadow=_shadow_from(data.get("shadow")),
        fallback_version=data.get("fallback_version", 0),
    )


def _shadow_from(data: dict[str, Any] | None) -> ShadowTarget | None:
    if data is None:
        return None
    return ShadowTarget(
        target=data["target"],
        fraction=data["fraction"],
        agreement_tolerance=data.get("agreement_tolerance", 0.0),
    )


def _from_row(row: Row) -> PolicyRevision:
    return PolicyRevision(
        model=row["model"],
        revision=row["revision"],
        policy=from_json(row["policy_json"]),
        note=row["note"],
        created_unix_ms=row["created_unix_ms"],
    )


def current(conn: Database, model: str | None) -> dict[str, PolicyRevision]:
    """The current revision of ``model``'s policy (of every model when None), by model."""
    where, args = ("AND p.model = ?", (model,)) if model is not None else ("", ())
    rows = conn.execute(
        "SELECT * FROM policies p WHERE p.revision = "
        f"(SELECT MAX(revision) FROM policies WHERE model = p.model) {where}",
        args,
    )
    return {row["model"]: _from_row(row) for row in rows}


def at_revision(conn: Database, model: str, revision: int) -> PolicyRevision | None:
    row = conn.execute(
        "SELECT * FROM policies WHERE model = ? AND revision = ?", (model, revision)
    ).fetchone()
    return None if row is None else _from_row(row)


def history(conn: Database, model: str, limit: int) -> tuple[PolicyRevision, ...]:
    """The newest ``limit`` revisions, oldest first."""
    rows = conn.execute(
        "SELECT * FROM policies WHERE model = ? ORDER BY revision DESC LIMIT ?", (model, limit)
    ).fetchall()
    return tuple(_from_row(row) for row in reversed(rows))


def insert(conn: Database, model: str, policy: RoutingPolicy, note: str, now_ms: int) -> int:
    """Append ``policy`` as the model's next revision; the revision number."""
    row = conn.execute(
        "SELECT COALESCE(MAX(revision), 0) + 1 FROM policies WHERE model = ?", (model,)
    ).fetchone()
    revision = int(row[0])
    conn.execute(
        "INSERT INTO policies VALUES (?, ?, ?, ?, ?)",
        (model, revision, to_json(policy), note, now_ms),
    )
    return revision


def _percent(basis_points: int) -> str:
    return f"{basis_points / 100:g}"
