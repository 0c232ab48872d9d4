"""Routing policies per request (modelserve.catalog.routing, catalog.route_version): consistent
bucketing of weighted splits, blue-green targets, and the precedence of explicit choices."""

from __future__ import annotations

from collections import Counter

import pytest

from modelserve.catalog.replica import resolve_version, route_version
from modelserve.catalog.routing import (
    BUCKETS,
    MAX_ROUTING_KEY_CHARS,
    Share,
    bucket_of,
    pick,
    primary,
    ranges,
    referenced_versions,
    routing_key_of,
)
from modelserve.errors import InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import registry_pb2
from worker.loader import deployed_versions

KEYS = [f"user-{i}" for i in range(10_000)]


def split_model(
    split: list[tuple[int | str, float]],
    *,
    labels: dict[str, int] | None = None,
    versions: tuple[int, ...] = (1, 2, 3),
) -> registry_pb2.Model:
    targets = [
        registry_pb2.SplitTarget(version=t, percent=p)
        if isinstance(t, int)
        else registry_pb2.SplitTarget(label=t, percent=p)
        for t, p in split
    ]
    return with_policy(registry_pb2.RoutingPolicy(split=targets), labels, versions)


def with_policy(
    policy: registry_pb2.RoutingPolicy,
    labels: dict[str, int] | None = None,
    versions: tuple[int, ...] = (1, 2, 3),
) -> registry_pb2.Model:
    return registry_pb2.Model(
        name="fraud",
        versions=[registry_pb2.ModelVersion(model="fraud", version=v) for v in versions],
        labels=labels if labels is not None else {"production": 1},
        policy=registry_pb2.PolicyRevision(model="fraud", revision=1, policy=policy),
    )


def routed(model: registry_pb2.Model, keys: list[str]) -> dict[str, int]:
    return {key: route_version(model, routing_key=key).version for key in keys}


def test_ten_thousand_keys_over_a_10_90_split_land_within_one_point() -> None:
    counts = Counter(routed(split_model([(1, 10), (2, 90)]), KEYS).values())
    assert set(counts) == {1, 2}
    assert abs(counts[1] / len(KEYS) - 0.10) <= 0.01, counts
    assert abs(counts[2] / len(KEYS) - 0.90) <= 0.01, counts


def test_the_same_key_always_lands_on_the_same_version() -> None:
    model = split_model([(1, 50), (2, 50)])
    first = routed(model, KEYS[:500])
    for _ in range(3):
        assert routed(model, KEYS[:500]) == first
    # A fresh message (another replica, after a restart) decides the same.
    again = registry_pb2.Model.FromString(model.SerializeToString())
    assert routed(again, KEYS[:500]) == first


def test_moving_the_canary_from_5_to_25_reassigns_only_keys_into_the_new_range() -> None:
    before = routed(split_model([(1, 95), (2, 5)]), KEYS)
    after = routed(split_model([(1, 75), (2, 25)]), KEYS)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(before[k] == 1 and after[k] == 2 for k in moved), "only stable -> canary moves"
    assert all(after[k] == 2 for k in KEYS if before[k] == 2), "the canary keeps its keys"
    assert all(7500 <= bucket_of("fraud", k) < 9500 for k in moved)
    assert abs(len(moved) / len(KEYS) - 0.20) <= 0.01, len(moved)


def test_the_order_a_split_is_listed_in_does_not_matter() -> None:
    listed = routed(split_model([(1, 95), (2, 5)]), KEYS[:2000])
    reversed_ = routed(split_model([(2, 5), (1, 95)]), KEYS[:2000])
    assert listed == reversed_


def test_ranges_are_contiguous_versions_first_then_labels() -> None:
    shares = [Share(0, "canary", 1000), Share(2, "", 3000), Share(1, "", 6000)]
    assert [(s.describe(), a, b) for s, a, b in ranges(shares)] == [
        ("version 1", 0, 6000),
        ("version 2", 6000, 9000),
        ("label 'canary'", 9000, 10000),
    ]
    assert pick(shares, 0).version == 1 and pick(shares, 5999).version == 1
    assert pick(shares, 6000).version == 2 and pick(shares, BUCKETS - 1).label == "canary"
    assert primary(shares).version == 1
    assert primary([Share(2, "", 5000), Share(1, "", 5000)]).version == 1  # tie: first in order


def test_a_split_over_labels_follows_the_labels() -> None:
    model = split_model([("stable", 50), ("canary", 50)], labels={"stable": 1, "canary": 2})
    first = routed(model, KEYS[:400])
    assert set(first.values()) == {1, 2}
    model.labels["canary"] = 3  # the label moved: that share's keys follow it
    second = routed(model, KEYS[:400])
    assert {k for k, v in first.items() if v == 2} == {k for k, v in second.items() if v == 3}


def test_requests_without_a_key_are_split_at_random() -> None:
    model = split_model([(1, 50), (2, 50)])
    counts = Counter(route_version(model).version for _ in range(4000))
    assert 0.45 <= counts[1] / 4000 <= 0.55, counts


def test_a_zero_share_receives_nothing_but_its_version_is_deployed() -> None:
    model = split_model([(1, 100), (3, 0)], labels={})
    assert set(routed(model, KEYS[:1000]).values()) == {1}
    assert referenced_versions(model) == {1, 3}
    assert set(deployed_versions({"fraud": model}, set())) == {("fraud", 1), ("fraud", 3)}


def test_a_target_label_sends_everything_there() -> None:
    model = with_policy(
        registry_pb2.RoutingPolicy(target_label="green"), labels={"blue": 1, "green": 2}
    )
    assert set(routed(model, KEYS[:200]).values()) == {2}
    assert route_version(model).version == 2 and resolve_version(model).version == 2
    model.labels["green"] = 3
    assert route_version(model, routing_key="k").version == 3


def test_an_explicit_version_or_label_wins_over_the_policy() -> None:
    model = split_model([(2, 100)], labels={"production": 1, "staging": 3})
    assert route_version(model, "1", routing_key="k").version == 1
    assert route_version(model, label="staging", routing_key="k").version == 3
    assert route_version(model, "staging").version == 3
    assert route_version(model, label="production").version == 1
    assert route_version(model, routing_key="k").version == 2


def test_lookups_that_route_no_request_take_the_largest_share() -> None:
    assert resolve_version(split_model([(1, 30), (2, 70)])).version == 2


def test_without_an_active_policy_the_default_rules_apply() -> None:
    cleared = with_policy(registry_pb2.RoutingPolicy(), labels={"production": 1})
    assert route_version(cleared, routing_key="k").version == 1
    assert resolve_version(cleared).version == 1
    assert referenced_versions(cleared) == set()
    never = registry_pb2.Model(
        name="m", versions=[registry_pb2.ModelVersion(model="m", version=v) for v in (1, 2)]
    )
    assert route_version(never, routing_key="k").version == 2


def test_the_model_name_is_part_of_the_hash() -> None:
    same = sum(bucket_of("fraud", k) == bucket_of("churn", k) for k in KEYS[:1000])
    assert same < 5


def request(**params: pb.InferParameter) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="fraud", parameters=params)


def test_routing_key_comes_from_the_parameter_else_the_metadata() -> None:
    meta = [("x-request-id", "r"), ("x-routing-key", "from-meta")]
    assert routing_key_of(request(), None) == ""
    assert routing_key_of(request(), meta) == "from-meta"
    assert routing_key_of(request(), [("x-routing-key", b"raw")]) == "raw"
    with_param = request(routing_key=pb.InferParameter(string_param="from-param"))
    assert routing_key_of(with_param, meta) == "from-param"
    numeric = request(routing_key=pb.InferParameter(int64_param=42))
    assert routing_key_of(numeric, None) == "42"


def test_a_bad_routing_key_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError, match="string or an integer"):
        routing_key_of(request(routing_key=pb.InferParameter(bool_param=True)), None)
    long = "k" * (MAX_ROUTING_KEY_CHARS + 1)
    with pytest.raises(InvalidArgumentError, match=f"at most {MAX_ROUTING_KEY_CHARS}"):
        routing_key_of(request(), [("x-routing-key", long)])
