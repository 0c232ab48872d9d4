"""Shadow policies in RegistryStore: validated like splits, versioned like every policy change,
kept across a restart, a shadow alone leaves the default resolution in force, and workers are
told to hold a shadow version (modelserve.catalog.routing.referenced_versions)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_testkit import FRAUD_V1, FRAUD_V2, open_store, push_direct

from modelserve.catalog.routing import referenced_versions
from modelserve.errors import FailedPreconditionError, InvalidArgumentError
from registry import convert
from registry.records import RoutingPolicy, ShadowTarget, SplitShare
from registry.store import RegistryStore

pytestmark = pytest.mark.usefixtures("database_url")


def shadow(target: str, fraction: float = 0.5, tolerance: float = 0.0) -> ShadowTarget:
    return ShadowTarget(target=target, fraction=fraction, agreement_tolerance=tolerance)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RegistryStore]:
    store = open_store(tmp_path / "data")
    push_direct(store, "fraud", FRAUD_V1, labels=["production"])
    push_direct(store, "fraud", FRAUD_V2, labels=["staging"])
    push_direct(store, "fraud", FRAUD_V2)
    yield store
    store.close()


def test_a_shadow_alone_is_a_policy_revision_on_top_of_the_default(store: RegistryStore) -> None:
    written = store.set_policy("fraud", RoutingPolicy(shadow=shadow("2")), note="try v2")
    assert written.revision == 1 and written.policy.shadow == shadow("2")
    assert store.resolve("fraud").version == 1  # still the production label
    with_split = RoutingPolicy(
        split=(SplitShare(version=1, basis_points=10_000),), shadow=shadow("staging", 1.0)
    )
    assert store.set_policy("fraud", with_split).revision == 2
    assert store.rollback_policy("fraud").policy.shadow == shadow("2")  # revision 3
    assert [r.revision for r in store.policy_history("fraud")] == [1, 2, 3]


def test_shadows_survive_a_restart_and_travel_in_the_model(tmp_path: Path) -> None:
    store = open_store(tmp_path / "data")
    push_direct(store, "fraud", FRAUD_V1)
    push_direct(store, "fraud", FRAUD_V2)
    store.set_policy("fraud", RoutingPolicy(shadow=shadow("1", 0.25, 1e-3)))
    store.close()
    again = open_store(tmp_path / "data")
    try:
        record = again.get_model("fraud")
        assert record.policy is not None and record.policy.policy.shadow == shadow("1", 0.25, 1e-3)
        model = convert.model_to_proto(record)
        assert model.policy.policy.shadow.fraction == 0.25
        assert referenced_versions(model) == {1}  # workers hold it warm for the mirror
    finally:
        again.close()


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (shadow("9"), FailedPreconditionError, "mirrors to version 9"),
        (shadow("canary"), FailedPreconditionError, "label 'canary'"),
        (shadow("2", 0.0), InvalidArgumentError, r"fraction must be in \(0, 1\]"),
        (shadow("2", 1.5), InvalidArgumentError, r"fraction must be in \(0, 1\]"),
        (shadow("2", float("nan")), InvalidArgumentError, "fraction"),
        (shadow("2", 0.5, -1.0), InvalidArgumentError, "agreement_tolerance"),
        (shadow(""), InvalidArgumentError, "names no target"),
        (shadow("../x"), InvalidArgumentError, "shadow target label"),
    ],
)
def test_bad_shadows_are_refused_and_the_policy_in_force_stays(
    store: RegistryStore, bad: ShadowTarget, error: type[Exception], match: str
) -> None:
    store.set_policy("fraud", RoutingPolicy(shadow=shadow("2")))
    with pytest.raises(error, match=match):
        store.set_policy("fraud", RoutingPolicy(shadow=bad))
    now = store.get_model("fraud").policy
    assert now is not None and now.revision == 1 and now.policy.shadow == shadow("2")


def test_a_label_a_shadow_mirrors_to_cannot_be_deleted(store: RegistryStore) -> None:
    store.set_policy("fraud", RoutingPolicy(shadow=shadow("staging")))
    with pytest.raises(FailedPreconditionError, match="routing policy"):
        store.delete_label("fraud", "staging")


def test_the_proto_round_trip_keeps_the_shadow() -> None:
    policy = RoutingPolicy(target_label="production", shadow=shadow("3", 0.1, 0.01))
    assert convert.policy_from_proto(convert.policy_to_proto(policy)) == policy
    assert convert.policy_from_proto(convert.policy_to_proto(RoutingPolicy())).shadow is None
