"""Routing policies in RegistryStore on a real SQLite file: persistence across a restart,
revisions and history, rollback, validation that leaves the policy in force untouched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_testkit import FRAUD_V1, FRAUD_V2, make_legacy_sqlite, open_store, push_direct

from modelserve.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ModelServeError,
    NotFoundError,
)
from registry.records import ChangeEvent, RoutingPolicy, SplitShare
from registry.store import RegistryStore

pytestmark = pytest.mark.usefixtures("database_url")


def split(*shares: tuple[int | str, int]) -> RoutingPolicy:
    """A split from (version or label, percent) pairs."""
    return RoutingPolicy(
        split=tuple(
            SplitShare(version=t, basis_points=p * 100)
            if isinstance(t, int)
            else SplitShare(label=t, basis_points=p * 100)
            for t, p in shares
        )
    )


def target(label: str) -> RoutingPolicy:
    return RoutingPolicy(target_label=label)


def seeded(store: RegistryStore) -> RegistryStore:
    """fraud v1 (production, blue) and v2 (staging, green)."""
    push_direct(store, "fraud", FRAUD_V1, labels=["production", "blue"])
    push_direct(store, "fraud", FRAUD_V2, labels=["staging", "green"])
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RegistryStore]:
    store = open_store(tmp_path / "data")
    yield seeded(store)
    store.close()


def test_a_policy_is_a_new_revision_carried_by_the_model(store: RegistryStore) -> None:
    assert store.get_model("fraud").policy is None
    start = store.revision()
    written = store.set_policy("fraud", split((1, 90), (2, 10)), note="canary")
    assert (written.model, written.revision, written.note) == ("fraud", 1, "canary")
    assert written.created_unix_ms > 0
    assert store.get_model("fraud").policy == written
    assert store.revision() == start + 1  # a registry change like any other: watched
    again = store.set_policy("fraud", split((1, 90), (2, 10)))
    assert again == written and store.revision() == start + 1  # already so: no revision


def test_policies_survive_a_restart(tmp_path: Path) -> None:
    store = seeded(open_store(tmp_path / "data"))
    store.set_policy("fraud", split((1, 50), (2, 50)))
    store.set_policy("fraud", target("green"), note="cut over")
    before = store.get_model("fraud").policy, store.policy_history("fraud")
    store.close()

    store = open_store(tmp_path / "data")
    try:
        assert (store.get_model("fraud").policy, store.policy_history("fraud")) == before
        assert store.rollback_policy("fraud").revision == 3  # numbering continues
    finally:
        store.close()


def test_history_lists_every_revision_oldest_first(store: RegistryStore) -> None:
    store.set_policy("fraud", split((1, 95), (2, 5)))
    store.set_policy("fraud", split((1, 75), (2, 25)))
    store.set_policy("fraud", target("green"))
    store.clear_policy("fraud", note="done")
    history = store.policy_history("fraud")
    assert [h.revision for h in history] == [1, 2, 3, 4]
    assert history[2].policy == target("green") and history[3].policy.empty
    assert [h.revision for h in store.policy_history("fraud", limit=2)] == [3, 4]
    with pytest.raises(InvalidArgumentError, match="limit must be"):
        store.policy_history("fraud", limit=5000)


def test_rollback_restores_the_previous_policy_as_a_new_revision(store: RegistryStore) -> None:
    store.set_policy("fraud", target("blue"))
    store.set_policy("fraud", target("green"))
    assert store.resolve("fraud").version == 2
    back = store.rollback_policy("fraud")
    assert (back.revision, back.policy, back.note) == (3, target("blue"), "rollback to revision 1")
    assert store.resolve("fraud").version == 1
    # The one before the current is the bad one again: rollbacks toggle, like `rollout undo`.
    assert store.rollback_policy("fraud").policy == target("green")
    chosen = store.rollback_policy("fraud", to_revision=1)
    assert (chosen.revision, chosen.policy) == (5, target("blue"))


def test_rolling_back_the_first_policy_restores_the_default(store: RegistryStore) -> None:
    store.set_policy("fraud", target("green"))
    assert store.resolve("fraud").version == 2
    back = store.rollback_policy("fraud")
    assert back.revision == 2 and back.policy.empty
    assert store.resolve("fraud").version == 1  # production label again


def test_rollback_errors(store: RegistryStore) -> None:
    with pytest.raises(FailedPreconditionError, match="no policy to roll back"):
        store.rollback_policy("fraud")
    store.set_policy("fraud", target("green"))
    with pytest.raises(NotFoundError, match="no policy revision 7"):
        store.rollback_policy("fraud", to_revision=7)
    with pytest.raises(InvalidArgumentError, match="to_revision must be >= 0"):
        store.rollback_policy("fraud", to_revision=-1)


def test_a_rollback_to_a_label_deleted_since_is_refused(store: RegistryStore) -> None:
    store.set_policy("fraud", target("blue"))
    store.set_policy("fraud", target("green"))
    store.delete_label("fraud", "blue")  # no longer in the policy in force
    with pytest.raises(FailedPreconditionError, match="label 'blue'"):
        store.rollback_policy("fraud")
    assert store.get_model("fraud").policy.policy == target("green")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("policy", "error", "fragment"),
    [
        (split((1, 90), (2, 5)), InvalidArgumentError, "sum to 95%"),
        (split((1, 110), (2, -10)), InvalidArgumentError, "-10% is negative"),
        (split((1, 50), (1, 50)), InvalidArgumentError, "names version 1 twice"),
        (split(("green", 50), ("green", 50)), InvalidArgumentError, "label 'green' twice"),
        (split((1, 50), (7, 50)), FailedPreconditionError, "version 7, which model 'fraud'"),
        (split((1, 50), ("canary", 50)), FailedPreconditionError, "label 'canary'"),
        (target("purple"), FailedPreconditionError, "labels: blue, green, production, staging"),
        (target("../x"), InvalidArgumentError, "invalid target label"),
        (RoutingPolicy(), InvalidArgumentError, "the policy is empty"),
        (
            RoutingPolicy(split=split((1, 100)).split, target_label="green"),
            InvalidArgumentError,
            "not both",
        ),
        (
            RoutingPolicy(split=(SplitShare(version=1, label="blue", basis_points=10000),)),
            InvalidArgumentError,
            "a version or a label, not both",
        ),
        (
            RoutingPolicy(split=(SplitShare(basis_points=10000),)),
            InvalidArgumentError,
            "neither a version nor a label",
        ),
        (
            RoutingPolicy(split=tuple(SplitShare(version=v, basis_points=500) for v in range(20))),
            InvalidArgumentError,
            "at most 16 targets",
        ),
    ],
)
def test_bad_policies_are_refused_and_the_previous_stays_in_force(
    store: RegistryStore, policy: RoutingPolicy, error: type[ModelServeError], fragment: str
) -> None:
    before = store.set_policy("fraud", split((1, 90), (2, 10)))
    revision = store.revision()
    with pytest.raises(error) as info:
        store.set_policy("fraud", policy)
    assert fragment in info.value.message, info.value.message
    assert store.get_model("fraud").policy == before
    assert store.policy_history("fraud") == (before,)
    assert store.revision() == revision


def test_unknown_model_and_long_note(store: RegistryStore) -> None:
    with pytest.raises(NotFoundError, match="unknown model 'nope'"):
        store.set_policy("nope", target("green"))
    with pytest.raises(InvalidArgumentError, match="note must be at most"):
        store.set_policy("fraud", target("green"), note="x" * 300)


def test_a_label_in_the_policy_in_force_cannot_be_deleted(store: RegistryStore) -> None:
    store.set_policy("fraud", split(("blue", 50), (2, 50)))
    with pytest.raises(FailedPreconditionError, match="routing policy of model 'fraud'"):
        store.delete_label("fraud", "blue")
    store.set_label("fraud", "blue", 2)  # moving it is how blue-green deploys: allowed
    store.clear_policy("fraud")
    store.delete_label("fraud", "blue")


def test_lookups_without_version_or_label_follow_the_policy(store: RegistryStore) -> None:
    assert store.resolve("fraud").version == 1  # production
    store.set_policy("fraud", split((1, 30), (2, 70)))
    assert store.resolve("fraud").version == 2  # the largest share, as the catalog does
    store.set_policy("fraud", target("blue"))
    assert store.resolve("fraud").version == 1
    assert store.resolve("fraud", version=2).version == 2
    assert store.resolve("fraud", label="green").version == 2
    store.clear_policy("fraud")
    assert store.resolve("fraud").version == 1
    assert store.clear_policy("fraud").revision == 3  # already clear: no new revision


def test_clearing_a_model_that_never_had_a_policy_changes_nothing(store: RegistryStore) -> None:
    revision = store.revision()
    assert store.clear_policy("fraud").revision == 0
    assert store.revision() == revision and store.get_model("fraud").policy is None


def test_policy_changes_are_announced_with_the_model(tmp_path: Path) -> None:
    events: list[ChangeEvent] = []
    store = seeded(open_store(tmp_path / "data", on_change=events.append))
    try:
        store.set_policy("fraud", target("green"))
        with pytest.raises(FailedPreconditionError):
            store.set_policy("fraud", target("purple"))  # refused: not announced
        store.rollback_policy("fraud")
    finally:
        store.close()
    policies = [e.models[0].policy for e in events[-2:]]
    assert [p.revision for p in policies if p] == [1, 2]
    assert events[-2].models[0].policy.policy == target("green")  # type: ignore[union-attr]
    assert events[-1].models[0].policy.policy.empty  # type: ignore[union-attr]


def test_a_schema_1_database_gains_the_policies_table(tmp_path: Path) -> None:
    seeded(RegistryStore(tmp_path / "data")).close()
    make_legacy_sqlite(tmp_path / "data" / "registry.sqlite3", 1)
    store = RegistryStore(tmp_path / "data")
    try:
        assert [v.version for v in store.get_model("fraud").versions] == [1, 2]
        assert store.set_policy("fraud", target("green")).revision == 1
    finally:
        store.close()
