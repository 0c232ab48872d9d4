"""Watch over gRPC: a snapshot, then every change in revision order, with no gap between."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import pytest
from registry_testkit import FRAUD_V1, FRAUD_V2, Registry, eventually

from modelserve.proto.modelserve.v1 import registry_pb2

pytestmark = pytest.mark.usefixtures("database_url")


async def next_event(call: Any) -> registry_pb2.WatchEvent:
    event: registry_pb2.WatchEvent = await asyncio.wait_for(call.read(), 5)
    assert event is not grpc.aio.EOF, "watch stream ended"
    return event


def set_label(label: str, version: int) -> registry_pb2.SetLabelRequest:
    return registry_pb2.SetLabelRequest(model="fraud", label=label, version=version)


async def test_snapshot_then_live_events_for_a_push_and_a_label_move(registry: Registry) -> None:
    await registry.push("fraud", FRAUD_V1, labels=["production"])
    call = registry.stub.Watch(registry_pb2.WatchRequest())
    try:
        snapshot = await next_event(call)
        assert snapshot.snapshot and snapshot.revision == 1
        assert [m.name for m in snapshot.models] == ["fraud"]
        assert dict(snapshot.models[0].labels) == {"production": 1}

        await registry.push("fraud", FRAUD_V2)
        pushed = await next_event(call)
        assert not pushed.snapshot and pushed.revision == 2
        assert [v.version for v in pushed.models[0].versions] == [1, 2]

        await registry.stub.SetLabel(set_label("production", 2))
        moved = await next_event(call)
        assert moved.revision == 3 and dict(moved.models[0].labels) == {"production": 2}
        assert list(moved.models[0].versions[1].labels) == ["production"]
    finally:
        call.cancel()
    await eventually(lambda: registry.hub.watcher_count == 0)


def hold(registry: Registry) -> threading.Event:
    """Block the registry's store thread until the returned event is set: store calls queue
    up behind it in a known order."""
    gate = threading.Event()
    registry.store_executor.submit(gate.wait, 30)  # set in `finally`
    return gate


async def test_a_change_committed_before_the_snapshot_is_not_sent_twice(
    registry: Registry,
) -> None:
    await registry.push("fraud", FRAUD_V1)
    await registry.push("fraud", FRAUD_V2)
    gate = hold(registry)
    # Store thread queue: [gate, set_label, watcher's snapshot]. The change is published
    # after the watcher subscribed, and is also in its snapshot: it must come once.
    registry.store_executor.submit(registry.store.set_label, "fraud", "production", 1)
    call = registry.stub.Watch(registry_pb2.WatchRequest())
    try:
        # Subscribed while its snapshot read still waits behind the gate.
        await eventually(lambda: registry.hub.watcher_count == 1, within=2)
        gate.set()
        snapshot = await next_event(call)
        assert snapshot.snapshot and snapshot.revision == 3
        assert dict(snapshot.models[0].labels) == {"production": 1}
        await registry.stub.SetLabel(set_label("production", 2))
        assert (await next_event(call)).revision == 4
    finally:
        gate.set()
        call.cancel()


async def test_a_change_committed_right_after_the_snapshot_is_not_lost(
    registry: Registry,
) -> None:
    await registry.push("fraud", FRAUD_V1)
    gate = hold(registry)
    # Store thread queue: [gate, watcher's snapshot, set_label]: the change commits just after
    # the snapshot was read and before the Watch handler resumes.
    call = registry.stub.Watch(registry_pb2.WatchRequest())
    try:
        await eventually(lambda: registry.hub.watcher_count == 1, within=2)
        registry.store_executor.submit(registry.store.set_label, "fraud", "production", 1)
        gate.set()
        snapshot = await next_event(call)
        assert snapshot.revision == 1 and dict(snapshot.models[0].labels) == {}
        change = await next_event(call)
        assert change.revision == 2 and dict(change.models[0].labels) == {"production": 1}
    finally:
        gate.set()
        call.cancel()


async def test_watchers_joining_while_changes_stream_see_every_revision_once(
    registry: Registry,
) -> None:
    await registry.push("fraud", FRAUD_V1)
    await registry.push("fraud", FRAUD_V2)
    writes = 60
    # Concurrent calls keep the store busy while watchers join one by one.
    writer = asyncio.ensure_future(
        asyncio.gather(
            *(registry.stub.SetLabel(set_label(f"l{i}", 1 + i % 2)) for i in range(writes))
        )
    )
    calls: list[Any] = []
    while not writer.done() or not calls:
        calls.append(registry.stub.Watch(registry_pb2.WatchRequest()))
        await eventually(lambda: registry.hub.watcher_count == len(calls))
    watches = [(call, await next_event(call)) for call in calls]
    await writer
    final = 2 + writes
    try:
        for call, snapshot in watches:
            revisions = [snapshot.revision]
            while revisions[-1] < final:
                revisions.append((await next_event(call)).revision)
            assert revisions == list(range(snapshot.revision, final + 1)), revisions
    finally:
        for call, _ in watches:
            call.cancel()
    await eventually(lambda: registry.hub.watcher_count == 0)


async def test_closing_the_hub_ends_streams_with_unavailable(registry: Registry) -> None:
    call = registry.stub.Watch(registry_pb2.WatchRequest())
    assert (await next_event(call)).snapshot
    registry.hub.close()
    assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.UNAVAILABLE
    assert "watch again" in (await call.details() or "")
