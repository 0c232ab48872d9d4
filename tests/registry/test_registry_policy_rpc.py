"""The policy RPCs over a real grpc.aio server: status codes a person can act on, percents
decoded exactly, and the policy carried to watchers in the Model message."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from registry_testkit import FRAUD_V1, FRAUD_V2, Registry, expect_status

from modelserve.proto.modelserve.v1 import registry_pb2

pytestmark = pytest.mark.usefixtures("database_url")

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FAILED = grpc.StatusCode.FAILED_PRECONDITION
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def split_request(*shares: tuple[int | str, float]) -> registry_pb2.SetPolicyRequest:
    targets = [
        registry_pb2.SplitTarget(version=t, percent=p)
        if isinstance(t, int)
        else registry_pb2.SplitTarget(label=t, percent=p)
        for t, p in shares
    ]
    return registry_pb2.SetPolicyRequest(
        model="fraud", policy=registry_pb2.RoutingPolicy(split=targets)
    )


def switch_request(label: str) -> registry_pb2.SetPolicyRequest:
    return registry_pb2.SetPolicyRequest(
        model="fraud", policy=registry_pb2.RoutingPolicy(target_label=label)
    )


@pytest.fixture
async def seeded(registry: Registry) -> Registry:
    await registry.push("fraud", FRAUD_V1, labels=["production", "blue"])
    await registry.push("fraud", FRAUD_V2, labels=["green"])
    return registry


async def next_event(call: Any) -> registry_pb2.WatchEvent:
    event: registry_pb2.WatchEvent = await asyncio.wait_for(call.read(), 5)
    assert event is not grpc.aio.EOF, "watch stream ended"
    return event


async def test_set_show_switch_rollback_history(seeded: Registry) -> None:
    stub = seeded.stub
    first = await stub.SetPolicy(split_request((1, 33.33), (2, 66.67)))
    assert first.revision == 1
    assert [(t.version, t.percent) for t in first.policy.split] == [(1, 33.33), (2, 66.67)]
    model = await stub.GetModel(registry_pb2.GetModelRequest(name="fraud"))
    assert model.policy == first
    switched = await stub.SetPolicy(switch_request("green"))
    assert (switched.revision, switched.policy.target_label) == (2, "green")
    resolved = await stub.GetVersion(registry_pb2.GetVersionRequest(model="fraud"))
    assert resolved.version == 2
    back = await stub.RollbackPolicy(registry_pb2.RollbackPolicyRequest(model="fraud"))
    assert back.revision == 3 and back.policy.split == first.policy.split
    cleared = await stub.ClearPolicy(registry_pb2.ClearPolicyRequest(model="fraud", note="off"))
    assert cleared.revision == 4 and not cleared.policy.split and not cleared.policy.target_label
    history = await stub.ListPolicyHistory(registry_pb2.ListPolicyHistoryRequest(model="fraud"))
    assert [(r.revision, r.note) for r in history.revisions] == [
        (1, ""),
        (2, ""),
        (3, "rollback to revision 1"),
        (4, "off"),
    ]


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        (split_request((1, 90), (2, 5)), INVALID, "sum to 95%"),
        (split_request((1, 105), (2, -5)), INVALID, "-5% is negative"),
        (split_request((1, 50), (1, 50)), INVALID, "version 1 twice"),
        (split_request((1, 33.333), (2, 66.667)), INVALID, "more than two decimals"),
        (split_request((1, float("nan")), (2, 50)), INVALID, "must be a number"),
        (split_request((1, 50), (9, 50)), FAILED, "version 9, which model 'fraud' does not"),
        (switch_request("purple"), FAILED, "label 'purple'"),
        (registry_pb2.SetPolicyRequest(model="fraud"), INVALID, "the policy is empty"),
    ],
)
async def test_bad_policies_name_the_problem_and_change_nothing(
    seeded: Registry, request_: registry_pb2.SetPolicyRequest, code: grpc.StatusCode, fragment: str
) -> None:
    before = await seeded.stub.SetPolicy(switch_request("blue"))
    await expect_status(seeded.stub.SetPolicy(request_), code, fragment)
    model = await seeded.stub.GetModel(registry_pb2.GetModelRequest(name="fraud"))
    assert model.policy == before


async def test_every_policy_rpc_answers_not_found_for_an_unknown_model(seeded: Registry) -> None:
    stub = seeded.stub
    calls = [
        stub.SetPolicy(
            registry_pb2.SetPolicyRequest(model="nope", policy=switch_request("g").policy)
        ),
        stub.ClearPolicy(registry_pb2.ClearPolicyRequest(model="nope")),
        stub.RollbackPolicy(registry_pb2.RollbackPolicyRequest(model="nope")),
        stub.ListPolicyHistory(registry_pb2.ListPolicyHistoryRequest(model="nope")),
    ]
    for call in calls:
        await expect_status(call, NOT_FOUND, "unknown model 'nope'")
    await expect_status(
        stub.RollbackPolicy(registry_pb2.RollbackPolicyRequest(model="fraud")),
        FAILED,
        "no policy to roll back",
    )


async def test_watchers_receive_each_policy_change_in_the_model(seeded: Registry) -> None:
    await seeded.stub.SetPolicy(split_request((1, 50), (2, 50)))
    call = seeded.stub.Watch(registry_pb2.WatchRequest())
    try:
        snapshot = await next_event(call)
        assert snapshot.models[0].policy.revision == 1
        assert len(snapshot.models[0].policy.policy.split) == 2

        await seeded.stub.SetPolicy(switch_request("green"))
        switched = await next_event(call)
        assert switched.revision == snapshot.revision + 1
        assert switched.models[0].policy.policy.target_label == "green"

        await seeded.stub.RollbackPolicy(registry_pb2.RollbackPolicyRequest(model="fraud"))
        rolled = await next_event(call)
        assert rolled.models[0].policy.revision == 3
        assert [t.percent for t in rolled.models[0].policy.policy.split] == [50, 50]
    finally:
        call.cancel()
