"""Client-side balancing (power of two choices, ejection, panic threshold) and the per-hop
deadline budget computed on a real grpc.aio server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from grpc import aio
from testsupport import eventually

from modelserve.channels import (
    EJECT_AFTER_FAILURES,
    EJECT_BASE_S,
    EJECT_MAX_S,
    Endpoint,
    EndpointSet,
    internal_channel,
    pick,
)
from modelserve.deadlines import Deadline
from modelserve.errors import DeadlineExceededError
from modelserve.interceptors import ErrorInterceptor
from modelserve.proto.modelserve.v1 import router_pb2, router_pb2_grpc

PICKS = 200  # enough draws that a wrong choice would show up


@pytest.fixture
async def make_endpoint() -> AsyncIterator[Callable[..., Endpoint]]:
    """Endpoints on real (lazy, never connected) channels, closed after the test."""
    made: list[Endpoint] = []

    def make(address: str, outstanding: int = 0, ejected: bool = False) -> Endpoint:
        endpoint = Endpoint(address, internal_channel(address), outstanding=outstanding)
        if ejected:
            endpoint.ejected_until = time.monotonic() + 3600
        made.append(endpoint)
        return endpoint

    yield make
    for endpoint in made:
        await endpoint.close()


def addresses(candidates: list[Endpoint], exclude: tuple[str, ...] = ()) -> set[str]:
    chosen: set[str] = set()
    for _ in range(PICKS):
        endpoint = pick(candidates, exclude)
        assert endpoint is not None
        chosen.add(endpoint.address)
    return chosen


async def test_two_choices_prefer_fewer_outstanding(make_endpoint: Callable[..., Endpoint]) -> None:
    busy = make_endpoint("10.0.0.1:1", outstanding=5)
    idle = make_endpoint("10.0.0.2:1", outstanding=1)
    assert addresses([busy, idle]) == {"10.0.0.2:1"}


async def test_the_busiest_of_three_is_never_picked(make_endpoint: Callable[..., Endpoint]) -> None:
    eps = [make_endpoint(f"10.0.0.{i}:1", outstanding=o) for i, o in enumerate((0, 1, 9))]
    chosen = addresses(eps)
    assert "10.0.0.2:1" not in chosen  # it loses every pair it is drawn in
    assert "10.0.0.0:1" in chosen


async def test_ejected_endpoints_are_skipped(make_endpoint: Callable[..., Endpoint]) -> None:
    ejected = make_endpoint("10.0.0.1:1", outstanding=0, ejected=True)
    healthy = [make_endpoint(f"10.0.0.{i}:1", outstanding=3) for i in (2, 3)]
    assert addresses([ejected, *healthy]) == {"10.0.0.2:1", "10.0.0.3:1"}


async def test_exactly_half_ejected_is_not_panic(make_endpoint: Callable[..., Endpoint]) -> None:
    ejected = [make_endpoint(f"10.0.0.{i}:1", ejected=True) for i in (1, 2)]
    healthy = [make_endpoint(f"10.0.0.{i}:1", outstanding=7) for i in (3, 4)]
    assert addresses([*ejected, *healthy]) == {"10.0.0.3:1", "10.0.0.4:1"}


async def test_panic_threshold_uses_ejected_when_more_than_half_are_ejected(
    make_endpoint: Callable[..., Endpoint],
) -> None:
    ejected = [make_endpoint(f"10.0.0.{i}:1", outstanding=0, ejected=True) for i in (1, 2)]
    loaded = make_endpoint("10.0.0.3:1", outstanding=50)
    # Every pair of the three holds an idle ejected endpoint, which wins it.
    assert addresses([*ejected, loaded]) == {"10.0.0.1:1", "10.0.0.2:1"}
    only = make_endpoint("10.0.0.9:1", ejected=True)
    assert pick([only]) is only  # an all-ejected fleet is tried, not refused


async def test_exclude_is_honoured(make_endpoint: Callable[..., Endpoint]) -> None:
    a = make_endpoint("10.0.0.1:1", outstanding=0)
    b = make_endpoint("10.0.0.2:1", outstanding=9)
    c = make_endpoint("10.0.0.3:1", outstanding=9)
    assert addresses([a, b, c], exclude=("10.0.0.1:1",)) == {"10.0.0.2:1", "10.0.0.3:1"}
    assert pick([a, b], exclude=["10.0.0.1:1", "10.0.0.2:1"]) is None
    assert pick([]) is None


async def test_excluding_the_healthy_one_falls_back_to_ejected(
    make_endpoint: Callable[..., Endpoint],
) -> None:
    healthy = make_endpoint("10.0.0.1:1")
    ejected = make_endpoint("10.0.0.2:1", ejected=True)
    assert pick([healthy, ejected], exclude=[healthy.address]) is ejected


async def test_ejection_after_five_failures_in_a_row_with_growing_duration(
    make_endpoint: Callable[..., Endpoint],
) -> None:
    endpoint = make_endpoint("10.0.0.1:1")
    durations: list[float] = []
    for ejection in range(1, 13):
        for _ in range(EJECT_AFTER_FAILURES - 1):
            assert endpoint.record_failure() is False
        if ejection == 1:
            assert not endpoint.ejected(time.monotonic())
        before = time.monotonic()
        assert endpoint.record_failure() is True
        after = time.monotonic()
        assert endpoint.ejected(after)
        assert endpoint.consecutive_failures == 0 and endpoint.ejections == ejection
        # ejected_until = (a moment between before and after) + this ejection's duration
        durations.append(endpoint.ejected_until - after)
        assert before - after - 1e-6 <= durations[-1] - expected_duration(ejection) <= 1e-6
    assert expected_duration(1) == EJECT_BASE_S == 30.0
    assert durations[1] > durations[0] + EJECT_BASE_S - 1  # grows with every ejection
    assert max(durations) <= EJECT_MAX_S == 300.0  # and is capped


def expected_duration(ejections: int) -> float:
    return min(EJECT_BASE_S * ejections, EJECT_MAX_S)


async def test_a_success_resets_the_failure_run(make_endpoint: Callable[..., Endpoint]) -> None:
    endpoint = make_endpoint("10.0.0.1:1")
    for _ in range(EJECT_AFTER_FAILURES - 1):
        endpoint.record_failure()
    endpoint.record_success()
    for _ in range(EJECT_AFTER_FAILURES - 1):
        assert endpoint.record_failure() is False
    assert endpoint.ejections == 0 and not endpoint.ejected(time.monotonic())


async def test_endpoint_set_follows_addresses() -> None:
    endpoints = EndpointSet()
    try:
        added, removed = await endpoints.update(["10.0.0.1:1", "10.0.0.2:1"])
        assert [e.address for e in added] == ["10.0.0.1:1", "10.0.0.2:1"] and removed == []
        kept = endpoints.endpoints["10.0.0.2:1"]
        added, removed = await endpoints.update(["10.0.0.2:1", "10.0.0.3:1"])
        assert [e.address for e in added] == ["10.0.0.3:1"]
        assert [e.address for e in removed] == ["10.0.0.1:1"]
        assert endpoints.endpoints["10.0.0.2:1"] is kept  # its channel and counters survive
        stub = kept.stub(router_pb2_grpc.RouterControlStub)
        assert kept.stub(router_pb2_grpc.RouterControlStub) is stub
    finally:
        await endpoints.close()
    assert endpoints.endpoints == {}


class BudgetServicer(router_pb2_grpc.RouterControlServicer):
    """Resolve answers with the remaining time and the budget Deadline.for_hop computed.

    ``model == "default"`` passes a default of 3 s; ``model == "exhaust"`` keeps asking until
    Deadline.for_hop refuses, and records what it raised.
    """

    def __init__(self) -> None:
        self.raised: list[BaseException] = []

    async def Resolve(
        self, request: router_pb2.ResolveRequest, context: aio.ServicerContext
    ) -> router_pb2.ResolveResponse:
        if request.model == "exhaust":
            while True:
                try:
                    Deadline.of(context).for_hop()
                except DeadlineExceededError as exc:
                    self.raised.append(exc)
                    raise
                await asyncio.sleep(0)
        remaining = context.time_remaining()
        budget = Deadline.of(context).for_hop(3.0 if request.model == "default" else None)
        return router_pb2.ResolveResponse(model=repr(remaining), reason=repr(budget))


@pytest.fixture
async def budget_server() -> AsyncIterator[
    tuple[BudgetServicer, router_pb2_grpc.RouterControlStub]
]:
    servicer = BudgetServicer()  # type: ignore[abstract]  # only Resolve is needed
    server = aio.server(interceptors=[ErrorInterceptor()])
    router_pb2_grpc.add_RouterControlServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield servicer, router_pb2_grpc.RouterControlStub(channel)
    await server.stop(0)


@pytest.mark.parametrize("timeout", [10.0, 0.5])
async def test_hop_timeouts_keep_a_margin_of_the_remaining_deadline(
    budget_server: tuple[BudgetServicer, router_pb2_grpc.RouterControlStub], timeout: float
) -> None:
    _, stub = budget_server
    reply = await stub.Resolve(router_pb2.ResolveRequest(model="x"), timeout=timeout)
    before, budget = float(reply.model), float(reply.reason)
    assert 0 < before <= timeout * 1.01  # grpc-timeout is sent rounded to its unit
    assert budget <= before - max(0.002, 0.05 * before)  # 5 % (or 2 ms) kept back
    assert budget > 0  # (no lower bound beyond that: a loaded machine may pause between reads)


async def test_small_deadlines_keep_at_least_two_milliseconds(
    budget_server: tuple[BudgetServicer, router_pb2_grpc.RouterControlStub],
) -> None:
    _, stub = budget_server

    async def attempt() -> None:
        # On a starved machine the 30 ms may be spent before the handler runs: try again.
        reply = await stub.Resolve(router_pb2.ResolveRequest(model="x"), timeout=0.03)
        before, budget = float(reply.model), float(reply.reason)
        assert 0 < budget <= before - 0.002  # 5 % of < 30 ms would be under 2 ms

    await eventually(attempt)


async def test_without_a_deadline_the_default_is_used(
    budget_server: tuple[BudgetServicer, router_pb2_grpc.RouterControlStub],
) -> None:
    _, stub = budget_server
    with_default = await stub.Resolve(router_pb2.ResolveRequest(model="default"))
    assert with_default.model == "None" and with_default.reason == "3.0"
    without = await stub.Resolve(router_pb2.ResolveRequest(model="x"))
    assert without.reason == "None"


async def test_no_budget_left_raises_deadline_exceeded(
    budget_server: tuple[BudgetServicer, router_pb2_grpc.RouterControlStub],
) -> None:
    servicer, stub = budget_server

    async def attempt() -> None:
        with pytest.raises(aio.AioRpcError) as info:
            await stub.Resolve(router_pb2.ResolveRequest(model="exhaust"), timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The handler races the caller's own deadline timer; a lost race is tried again.
        assert servicer.raised, "the call was cancelled before Deadline.for_hop refused"

    await eventually(attempt)
    raised = servicer.raised[0]
    assert isinstance(raised, DeadlineExceededError)
    assert raised.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline exceeded" in raised.message
