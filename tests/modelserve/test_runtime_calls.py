"""The one outbound-call helper (modelserve.calls.Hop) and the deadline vocabulary
(modelserve.deadlines) against real grpc.aio servers: retry on UNAVAILABLE on another
endpoint, no retry otherwise, ejection, forwarded metadata and trace context, error
translation, deadlines carried from the incoming call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio

from modelserve.calls import Call, Hop, RetryBudget, fan_out, forwarded_of
from modelserve.channels import Endpoint, EndpointSet
from modelserve.deadlines import Deadline, EdgeDeadlines
from modelserve.errors import DeadlineExceededError, InvalidArgumentError, UnavailableError
from modelserve.proto.modelserve.v1 import router_pb2, router_pb2_grpc


class Peer(router_pb2_grpc.RouterControlServicer):
    """Resolve answers with its name, after failing as told: ``fail`` is a status code to
    abort with (UNAVAILABLE, INVALID_ARGUMENT, INTERNAL). Records metadata and deadlines."""

    def __init__(self, name: str, fail: grpc.StatusCode | None = None) -> None:
        self.name = name
        self.fail = fail
        self.address = ""
        self.metadata: list[dict[str, str]] = []
        self.remaining: list[float | None] = []

    async def Resolve(
        self, request: router_pb2.ResolveRequest, context: aio.ServicerContext
    ) -> router_pb2.ResolveResponse:
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        self.remaining.append(context.time_remaining())
        if self.fail is not None:
            await context.abort(self.fail, f"{self.name} failed at 10.1.2.3:4567 (GOAWAY)")
        return router_pb2.ResolveResponse(model=self.name)


async def _start(names: tuple[str, ...]) -> tuple[list[Peer], list[aio.Server], EndpointSet]:
    made: list[Peer] = []
    servers: list[aio.Server] = []
    endpoints = EndpointSet()
    for name in names:
        peer = Peer(name)  # type: ignore[abstract]  # only Resolve is needed
        server = aio.server()
        router_pb2_grpc.add_RouterControlServicer_to_server(peer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        peer.address = f"127.0.0.1:{port}"
        made.append(peer)
        servers.append(server)
    await endpoints.update([p.address for p in made])
    return made, servers, endpoints


@pytest.fixture
async def peers() -> AsyncIterator[tuple[list[Peer], EndpointSet]]:
    made, servers, endpoints = await _start(("a", "b"))
    yield made, endpoints
    await endpoints.close()
    for server in servers:
        await server.stop(0)


@pytest.fixture
async def three_peers() -> AsyncIterator[tuple[list[Peer], EndpointSet]]:
    made, servers, endpoints = await _start(("a", "b", "c"))
    yield made, endpoints
    await endpoints.close()
    for server in servers:
        await server.stop(0)


def resolve(endpoint: Endpoint) -> Any:
    return endpoint.stub(router_pb2_grpc.RouterControlStub).Resolve


REQUEST = router_pb2.ResolveRequest(model="m")


async def test_unavailable_is_retried_on_the_other_endpoint(
    peers: tuple[list[Peer], EndpointSet],
) -> None:
    (a, b), endpoints = peers
    a.fail = grpc.StatusCode.UNAVAILABLE
    hop = Hop("peer", attempts=2)
    for _ in range(6):
        reply = await hop.unary(endpoints.pick, resolve, REQUEST, Call())
        assert reply.model == "b"
    assert b.metadata, "every call ends on b"
    assert all(e.outstanding == 0 for e in endpoints.endpoints.values())


async def test_a_single_attempt_hop_does_not_retry(peers: tuple[list[Peer], EndpointSet]) -> None:
    (a, b), endpoints = peers
    a.fail = b.fail = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(UnavailableError, match="peer unavailable"):
        await Hop("peer", attempts=1).unary(endpoints.pick, resolve, REQUEST, Call())
    assert len(a.metadata) + len(b.metadata) == 1


async def test_other_codes_go_back_at_once_without_transport_details(
    peers: tuple[list[Peer], EndpointSet],
) -> None:
    (a, b), endpoints = peers
    a.fail = b.fail = grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidArgumentError):
        await Hop("peer").unary(endpoints.pick, resolve, REQUEST, Call())
    assert len(a.metadata) + len(b.metadata) == 1, "INVALID_ARGUMENT is never retried"
    a.fail = b.fail = grpc.StatusCode.INTERNAL
    with pytest.raises(Exception) as info:
        await Hop("peer").unary(endpoints.pick, resolve, REQUEST, Call())
    assert "10.1.2.3" not in str(info.value) and "peer failed" in str(info.value)


async def test_repeated_unavailable_ejects_the_endpoint(
    peers: tuple[list[Peer], EndpointSet],
) -> None:
    (a, _b), endpoints = peers
    a.fail = grpc.StatusCode.UNAVAILABLE
    hop = Hop("peer", attempts=1)
    only_a = endpoints.endpoints[a.address]
    for _ in range(5):
        with pytest.raises(UnavailableError):
            await hop.unary(lambda tried: only_a, resolve, REQUEST, Call())
    assert only_a.ejected(time.monotonic())


async def test_forwarded_metadata_and_the_deadline_reach_the_peer(
    peers: tuple[list[Peer], EndpointSet],
) -> None:
    (a, b), endpoints = peers
    call = Call(Deadline.after(3.0), (("x-request-id", "req-42"),))
    await Hop("peer").unary(endpoints.pick, resolve, REQUEST, call)
    seen = (a.metadata or b.metadata)[0]
    remaining = (a.remaining or b.remaining)[0]
    assert seen.get("x-request-id") == "req-42"
    assert remaining is not None and 2.0 < remaining < 3.0  # less the per-hop margin


async def test_no_endpoint_is_unavailable_with_the_given_message() -> None:
    with pytest.raises(UnavailableError, match="no worker holds it"):
        await Hop("worker").unary(
            lambda tried: None,
            resolve,
            REQUEST,
            Call(),
            none_left="no worker holds it",
        )


async def test_an_expired_deadline_is_not_sent(peers: tuple[list[Peer], EndpointSet]) -> None:
    (a, b), endpoints = peers
    with pytest.raises(DeadlineExceededError):
        await Hop("peer").unary(endpoints.pick, resolve, REQUEST, Call(Deadline.after(0.0)))
    assert not a.metadata and not b.metadata


async def test_fan_out_asks_every_endpoint(peers: tuple[list[Peer], EndpointSet]) -> None:
    (_a, b), endpoints = peers
    b.fail = grpc.StatusCode.UNAVAILABLE
    results = await fan_out(
        list(endpoints.endpoints.values()),
        resolve,
        REQUEST,
        Call(),
        default_timeout=2.0,
    )
    names = sorted(r.model for r in results if isinstance(r, router_pb2.ResolveResponse))
    assert names == ["a"] and sum(isinstance(r, grpc.RpcError) for r in results) == 1


def test_only_request_id_and_routing_key_are_forwarded() -> None:
    metadata = [
        ("x-request-id", "r1"),
        ("authorization", "Bearer secret"),
        ("x-routing-key", "user-7"),
        ("traceparent", "00-abc"),
        ("x-request-id", "x" * 1000),
    ]
    forwarded = forwarded_of(metadata)
    assert [k for k, _ in forwarded] == ["x-request-id", "x-routing-key", "x-request-id"]
    assert len(forwarded[2][1]) == 256


class Remaining:
    def __init__(self, value: float | None) -> None:
        self.value = value

    def time_remaining(self) -> float | None:
        return self.value


def test_the_edge_clamps_and_defaults() -> None:
    edge = EdgeDeadlines(default_s=5.0, min_s=0.01, max_s=30.0)
    assert 4.9 < (edge.admit(Remaining(None)).remaining() or 0) <= 5.0
    assert 29.9 < (edge.admit(Remaining(3600.0)).remaining() or 0) <= 30.0
    assert 0.0 < (edge.admit(Remaining(0.0001)).remaining() or 0) <= 0.01


def test_deadline_rules() -> None:
    none = Deadline()
    assert none.remaining() is None and none.for_hop(7.0) == 7.0 and not none.expired()
    assert none.side_call() == 0.05 and none.share(3) is none
    ten = Deadline.after(10.0)
    assert 9.0 < (ten.for_hop() or 0) <= 9.5  # 5 % kept back
    assert ten.side_call() == 0.05
    assert Deadline.after(0.1).side_call() == pytest.approx(0.02, 1e-2)
    assert 3.2 < (ten.share(3).remaining() or 0) <= 3.34
    with pytest.raises(DeadlineExceededError, match=r"needs at least 5\.0 ms"):
        Deadline.after(0.001).require(0.005, "the worker")
    Deadline.after(1.0).require(0.005, "the worker")
    assert Deadline.after(-1).expired()
    with pytest.raises(DeadlineExceededError):
        Deadline.after(0.001).for_hop()


async def test_retries_stay_within_the_budget_when_every_peer_fails(
    peers: tuple[list[Peer], EndpointSet],
) -> None:
    """A fleet answering UNAVAILABLE gets at most 1.1 attempts per call (plus the burst), not
    two: retries cannot multiply an outage's load (RELIABILITY-CASES T19)."""
    (a, b), endpoints = peers
    a.fail = b.fail = grpc.StatusCode.UNAVAILABLE
    for endpoint in endpoints.endpoints.values():  # keep both eligible: no ejection here
        endpoint.record_failure = lambda *args, **kwargs: False  # type: ignore[method-assign]
    hop = Hop("peer", attempts=2)
    for _ in range(100):
        with pytest.raises(UnavailableError):
            await hop.unary(endpoints.pick, resolve, REQUEST, Call())
    attempts = len(a.metadata) + len(b.metadata)
    assert 100 < attempts <= 100 + 10 + 10, attempts
    assert hop.budget.denied > 0


@pytest.mark.parametrize("attempts", [2, 3])  # the router's default (1 + 1 retry), the case's 3
async def test_one_of_three_peers_unavailable_costs_callers_nothing(
    three_peers: tuple[list[Peer], EndpointSet], attempts: int
) -> None:
    """T18: 1 of 3 peers answers UNAVAILABLE to everything. 1,000 calls, 10 at a time: at least
    99.9 % succeed, no call makes more than ``attempts`` attempts, every retry goes to a peer the
    call has not tried, and retries stay inside the budget (10 % of calls plus a burst of 10)
    because the failing peer is ejected after 5 failures in a row."""
    (a, b, c), endpoints = three_peers
    a.fail = grpc.StatusCode.UNAVAILABLE
    hop = Hop("peer", attempts=attempts)
    calls = 1000

    async def one(i: int) -> bool:
        call = Call(forwarded=(("x-request-id", f"r{i}"),))
        try:
            await hop.unary(endpoints.pick, resolve, REQUEST, call)
        except UnavailableError:
            return False
        return True

    ok = 0
    # 10 at a time: a steady load. A cold burst of 50 at once needs ~17 retries before the
    # failing peer is ejected, more than the budget's burst of 10 (and than Envoy's 20 % of
    # active): a few of those fail, as the budget means them to.
    for start in range(0, calls, 10):
        ok += sum(await asyncio.gather(*(one(i) for i in range(start, start + 10))))
    assert ok >= calls * 0.999, f"{ok} of {calls} succeeded"
    tried: dict[str, list[str]] = {}
    for peer in (a, b, c):
        for metadata in peer.metadata:
            tried.setdefault(metadata["x-request-id"], []).append(peer.name)
    assert len(tried) == calls
    assert max(len(names) for names in tried.values()) <= attempts
    assert all(len(set(names)) == len(names) for names in tried.values()), "a peer tried twice"
    retries = sum(len(names) - 1 for names in tried.values())
    assert retries == hop.budget.spent <= calls * 0.1 + 10, retries
    assert all(e.outstanding == 0 for e in endpoints.endpoints.values())


def test_the_retry_budget_scales_with_the_traffic_it_has_seen() -> None:
    """A kill -9 of one of two workers fails every call in flight to it at once: after 1,000
    first attempts the budget lets ~100 retries through (10 % of the window plus the reserve),
    not just the reserve of 10, and still refuses the 111th."""
    budget = RetryBudget()
    for _ in range(1000):
        budget.earn()
    allowed = sum(budget.spend() for _ in range(200))
    assert allowed == 110, allowed
    assert budget.denied == 90


def test_the_retry_budget_forgets_traffic_older_than_its_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("modelserve.calls.time.monotonic", lambda: clock[0])
    budget = RetryBudget(ttl_s=10)
    for _ in range(1000):
        budget.earn()
    assert budget.tokens == pytest.approx(110)
    clock[0] += 11
    assert budget.tokens == pytest.approx(10)  # the reserve alone
    assert sum(budget.spend() for _ in range(20)) == 10
