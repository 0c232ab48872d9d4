"""ConsulDiscovery against the in-process Consul agent stand-in (tests/fakes/consul_agent.py).

Every test names which part of the agent it exercises; the gRPC health checks are real:
the stand-in calls grpc.health.v1 Check on real grpc.aio servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from fakes.consul_agent import FakeConsulAgent
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from testsupport import HEALTH_SERVER_SCRIPT, eventually

from modelserve.discovery import Instance, Registration
from modelserve.discovery.consul import (
    ConsulDiscovery,
    _split_addr,
    format_duration,
    parse_duration,
)
from modelserve.errors import PermissionDeniedError, UnavailableError


def fast(addr: str, **kwargs: Any) -> ConsulDiscovery:
    """A backend whose checks run every 50 ms (the stand-in lets intervals go below 1s)."""
    return ConsulDiscovery(addr, check_interval_s=0.05, check_timeout_s=1.0, **kwargs)


class HealthServer:
    """A real grpc.aio server that only serves grpc.health.v1, on a port the OS picks."""

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()
        self.server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def set_serving(self, serving: bool) -> None:
        response = health_pb2.HealthCheckResponse
        await self.servicer.set("", response.SERVING if serving else response.NOT_SERVING)


@pytest.fixture
async def agent() -> AsyncIterator[FakeConsulAgent]:
    # Consul's 1s check floor, 1m deregister floor and 30s reaper lowered for speed.
    fake = FakeConsulAgent(min_check_interval_s=0, min_deregister_after_s=0, reap_interval_s=0.1)
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def health_servers() -> AsyncIterator[list[HealthServer]]:
    servers = [HealthServer() for _ in range(2)]
    for s in servers:
        await s.server.start()
        await s.set_serving(True)
    yield servers
    for s in servers:
        await s.server.stop(grace=None)


async def _expect_count(consul: ConsulDiscovery, n: int) -> None:
    assert len(await consul.resolve("worker")) == n


async def _assert(condition: bool) -> None:
    """For ``eventually(lambda: _assert(...))``: the lambda re-evaluates the condition."""
    assert condition


class Watcher:
    """Runs ``discovery.watch(service)`` in a task and records every list it yields."""

    def __init__(self, discovery: ConsulDiscovery, service: str) -> None:
        self.seen: list[list[Instance]] = []
        self.task = asyncio.create_task(self._run(discovery.watch(service)))

    async def _run(self, stream: AsyncIterator[list[Instance]]) -> None:
        async for instances in stream:
            self.seen.append(instances)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 2)
        assert self.task.cancelled()


def reg(server: HealthServer, instance_id: str, **meta: str) -> Registration:
    return Registration(
        service="worker",
        instance_id=instance_id,
        host="127.0.0.1",
        port=server.port,
        meta=meta,
        tags=("v1",),
    )


def addresses(instances: list[Instance]) -> list[str]:
    return [i.address for i in instances]


@pytest.fixture
async def consul(agent: FakeConsulAgent) -> AsyncIterator[ConsulDiscovery]:
    d = fast(agent.addr)
    yield d
    await d.close()


async def test_passing_instance_is_resolved(
    agent: FakeConsulAgent, consul: ConsulDiscovery, health_servers: list[HealthServer]
) -> None:
    """Stand-in: register, real gRPC checks (start critical, first result counts), ?passing."""
    server = health_servers[0]
    await server.set_serving(False)
    await consul.register(reg(server, "w1", models="iris:1"))
    await asyncio.sleep(0.3)  # several check intervals, all NOT_SERVING
    assert agent.check_status("w1") == "critical"
    assert await consul.resolve("worker") == []

    await server.set_serving(True)

    async def resolved() -> None:
        assert await consul.resolve("worker") == [
            Instance(
                service="worker",
                instance_id="w1",
                address=f"127.0.0.1:{server.port}",
                meta={"models": "iris:1"},
                tags=("v1",),
            )
        ]

    await eventually(resolved)


async def test_not_serving_drops_out_of_resolve_and_watch(
    agent: FakeConsulAgent, consul: ConsulDiscovery, health_servers: list[HealthServer]
) -> None:
    """Stand-in: gRPC check turning critical after FailuresBeforeCritical, blocking queries."""
    a, b = health_servers
    await consul.register(reg(a, "wa"))
    await consul.register(reg(b, "wb"))
    watcher = Watcher(consul, "worker")

    async def both_seen() -> None:
        assert watcher.seen and len(watcher.seen[-1]) == 2

    await eventually(both_seen)
    await b.set_serving(False)

    async def b_gone() -> None:
        assert addresses(watcher.seen[-1]) == [f"127.0.0.1:{a.port}"]

    await eventually(b_gone)
    assert addresses(await consul.resolve("worker")) == [f"127.0.0.1:{a.port}"]
    assert agent.check_status("wb") == "critical"
    # Every yield differs from the one before it: a watch reports changes, not wake-ups.
    assert all(x != y for x, y in zip(watcher.seen, watcher.seen[1:], strict=False))
    await watcher.stop()


async def test_watch_ignores_changes_that_do_not_touch_the_result(
    agent: FakeConsulAgent, consul: ConsulDiscovery, health_servers: list[HealthServer]
) -> None:
    """Stand-in: one index for everything, so another service's change wakes the query."""
    await consul.register(reg(health_servers[0], "w1"))
    await eventually(lambda: _expect_count(consul, 1))
    watcher = Watcher(consul, "worker")
    await eventually(lambda: _assert(len(watcher.seen) == 1))
    before = agent.index
    router = Registration("router", "r1", "127.0.0.1", health_servers[1].port)
    await consul.register(router)
    await eventually(lambda: _assert(agent.index > before + 1))  # registered, then passing
    await asyncio.sleep(0.2)
    assert len(watcher.seen) == 1
    await watcher.stop()


async def test_update_meta_is_visible_and_keeps_the_instance_passing(
    agent: FakeConsulAgent, consul: ConsulDiscovery, health_servers: list[HealthServer]
) -> None:
    """Stand-in: register as an upsert that keeps the check's status (no flapping)."""
    server = health_servers[0]
    await consul.register(reg(server, "w1", models="iris:1"))
    await eventually(lambda: _expect_count(consul, 1))
    watcher = Watcher(consul, "worker")
    await consul.update_meta(reg(server, "w1", models="iris:1,iris:2"))
    assert agent.check_status("w1") == "passing"

    async def updated() -> None:
        assert watcher.seen
        assert [i.meta for i in watcher.seen[-1]] == [{"models": "iris:1,iris:2"}]

    await eventually(updated)
    assert [i.meta for i in await consul.resolve("worker")] == [{"models": "iris:1,iris:2"}]
    assert all(len(seen) == 1 for seen in watcher.seen)  # never dropped out in between
    await watcher.stop()


async def test_deregister_removes_the_instance(
    agent: FakeConsulAgent, consul: ConsulDiscovery, health_servers: list[HealthServer]
) -> None:
    """Stand-in: deregister, and its 404 "Unknown service ID" on a second call."""
    registration = reg(health_servers[0], "w1")
    await consul.register(registration)
    await eventually(lambda: _expect_count(consul, 1))
    await consul.deregister(registration)
    assert await consul.resolve("worker") == []
    assert "w1" not in agent.services
    await consul.deregister(registration)  # already gone: not an error
    assert agent.requests[-1].path == "/v1/agent/service/deregister/w1"


async def test_critical_instance_is_reaped(
    agent: FakeConsulAgent, health_servers: list[HealthServer]
) -> None:
    """Stand-in: the reaper honouring the DeregisterCriticalServiceAfter we send."""
    consul = fast(agent.addr, deregister_critical_after="300ms")
    server = health_servers[0]
    await server.set_serving(False)
    await consul.register(reg(server, "w1"))
    await eventually(lambda: _assert("w1" not in agent.services), timeout=3)
    await consul.close()


async def test_acl_token_is_required_and_never_leaks(
    health_servers: list[HealthServer],
) -> None:
    """Stand-in: ACL checks (403 for a missing or wrong token, anonymous reads filtered)."""
    agent = FakeConsulAgent(acl_token="right-secret", min_check_interval_s=0)
    await agent.start()
    registration = reg(health_servers[0], "w1")
    anonymous = fast(agent.addr)
    wrong = fast(agent.addr, token="wrong-secret")
    right = fast(agent.addr, token="right-secret")
    try:
        with pytest.raises(PermissionDeniedError, match="Permission denied"):
            await anonymous.register(registration)
        with pytest.raises(PermissionDeniedError, match="ACL not found") as caught:
            await wrong.register(registration)
        assert "wrong-secret" not in str(caught.value)
        with pytest.raises(PermissionDeniedError):
            await wrong.resolve("worker")
        assert agent.services == {}

        await right.register(registration)
        await eventually(lambda: _expect_count(right, 1))
        assert await anonymous.resolve("worker") == []  # filtered, as Consul's anonymous token
        mine = [r for r in agent.requests if r.headers.get("x-consul-token") == "right-secret"]
        assert mine and all("token" not in r.query for r in mine)  # header only, never the URL
    finally:
        for d in (anonymous, wrong, right):
            await d.close()
        await agent.close()


async def test_request_bodies_use_consul_field_names(
    agent: FakeConsulAgent, health_servers: list[HealthServer]
) -> None:
    """Stand-in: records the raw requests; checks names, paths and RELIABILITY.md defaults."""
    consul = ConsulDiscovery(agent.addr)  # production defaults
    server = health_servers[0]
    await consul.register(reg(server, "w-1", models="iris:1"))
    await consul.resolve("worker")
    await consul.deregister(reg(server, "w-1"))
    await consul.close()

    put, get, delete = agent.requests
    assert (put.method, put.path) == ("PUT", "/v1/agent/service/register")
    assert put.body == {
        "ID": "w-1",
        "Name": "modelserve-worker",
        "Address": "127.0.0.1",
        "Port": server.port,
        "Tags": ["v1"],
        "Meta": {"models": "iris:1"},
        "Check": {
            "Name": f"gRPC health 127.0.0.1:{server.port}",
            "GRPC": f"127.0.0.1:{server.port}",
            "GRPCUseTLS": False,
            "Interval": "5s",
            "Timeout": "2s",
            "DeregisterCriticalServiceAfter": "10m",
            "SuccessBeforePassing": 2,
            "FailuresBeforeCritical": 2,
        },
    }
    assert (get.method, get.path, get.query) == (
        "GET",
        "/v1/health/service/modelserve-worker",
        {"passing": "true"},
    )
    assert (delete.method, delete.path) == ("PUT", "/v1/agent/service/deregister/w-1")


async def test_watch_sends_blocking_query_parameters(
    agent: FakeConsulAgent, health_servers: list[HealthServer]
) -> None:
    """Stand-in: blocking queries; the watch passes back X-Consul-Index with our wait."""
    consul = fast(agent.addr, wait="2s")
    watcher = Watcher(consul, "worker")
    await eventually(lambda: _assert(len(watcher.seen) == 1))
    await consul.register(reg(health_servers[0], "w1"))
    await eventually(lambda: _assert(len(watcher.seen) == 2))
    queries = [r.query for r in agent.requests if r.method == "GET"]
    assert queries[0] == {"passing": "true", "index": "0", "wait": "2s"}
    assert all(q["wait"] == "2s" and int(q["index"]) >= 1 for q in queries[1:])
    await watcher.stop()
    await consul.close()


@pytest.mark.parametrize(
    ("meta", "problem"),
    [
        ({f"k{i}": "v" for i in range(65)}, "at most 64"),
        ({"bad key": "v"}, r"\[A-Za-z0-9_-\]"),
        ({"": "v"}, "non-empty"),
        ({"k" * 129: "v"}, "longer than 128"),
        ({"consul-x": "v"}, "prefix"),
        ({"k": "é" * 257}, "514 bytes"),
    ],
)
async def test_meta_outside_consul_limits_is_refused_locally(
    agent: FakeConsulAgent, consul: ConsulDiscovery, meta: dict[str, str], problem: str
) -> None:
    """Stand-in: only to prove nothing was sent; the check is ours, mirroring Consul's limits."""
    bad = Registration("worker", "w1", "127.0.0.1", 5000, meta=meta)
    with pytest.raises(ValueError, match=problem):
        await consul.register(bad)
    with pytest.raises(ValueError, match=problem):
        await consul.update_meta(bad)
    assert agent.requests == []


async def test_meta_at_consul_limits_is_accepted(
    agent: FakeConsulAgent, consul: ConsulDiscovery
) -> None:
    """Stand-in: its own copy of Consul's meta validation accepts what ours lets through."""
    meta = {f"{i:03d}" + "k" * 125: "v" * 512 for i in range(64)}
    await consul.register(Registration("worker", "w1", "127.0.0.1", 5000, meta=meta))
    assert agent.services["w1"].definition["Meta"] == meta


async def test_watch_rides_out_errors_and_agent_restarts(
    agent: FakeConsulAgent, health_servers: list[HealthServer]
) -> None:
    """Stand-in: injected 500s, then a stopped listener (transport errors) and a restart."""
    consul = fast(agent.addr, token="tok-123")
    agent.fail_next(2)
    watcher = Watcher(consul, "worker")
    await eventually(lambda: _assert(len(watcher.seen) == 1))  # after two 500s
    assert watcher.seen[0] == []

    port = agent.port
    await agent.stop()  # drops the blocked query
    with pytest.raises(UnavailableError) as caught:
        await consul.resolve("worker")
    assert "tok-123" not in str(caught.value) and "unreachable" in str(caught.value)
    await asyncio.sleep(0.3)  # the watch is backing off meanwhile
    assert not watcher.task.done()

    await agent.start(port=port)
    await consul.register(reg(health_servers[0], "w1"))
    await eventually(lambda: _assert(len(watcher.seen) == 2), timeout=15)
    await watcher.stop()
    await consul.close()


async def test_watch_resets_an_index_that_goes_backwards(
    agent: FakeConsulAgent, health_servers: list[HealthServer]
) -> None:
    """Stand-in: blocking queries holding while index <= the one asked for (snapshot restore)."""
    consul = fast(agent.addr, wait="200ms")
    await consul.register(reg(health_servers[0], "wa"))
    await eventually(lambda: _expect_count(consul, 1))
    watcher = Watcher(consul, "worker")
    await eventually(lambda: _assert(len(watcher.seen) == 1))
    agent.restore_index(1)
    await asyncio.sleep(0.5)  # the held query times out and reports the lower index
    await consul.register(reg(health_servers[1], "wb"))
    await eventually(lambda: _assert(bool(watcher.seen) and len(watcher.seen[-1]) == 2))
    indexes = [r.query["index"] for r in agent.requests if "index" in r.query]
    assert "0" in indexes[1:]  # after the lower index the watch started over with 0
    await watcher.stop()
    await consul.close()


async def test_watch_never_blocks_on_index_zero_and_is_rate_limited(
    agent: FakeConsulAgent,
) -> None:
    """Stand-in: answering X-Consul-Index 0 (a Consul bug) must not become a busy loop."""
    agent.force_index_header = 0
    agent.index = 10  # so a query with index=1 answers at once, every time
    consul = fast(agent.addr)
    watcher = Watcher(consul, "worker")
    await asyncio.sleep(1.5)
    await watcher.stop()
    await consul.close()
    indexes = [r.query["index"] for r in agent.requests]
    assert indexes[0] == "0" and set(indexes[1:]) == {"1"}
    # Token bucket: burst 2, then one query a second.
    assert 2 <= len(indexes) <= 5


async def test_empty_service_address_falls_back_to_node_address() -> None:
    """Stand-in: the Node/Service shapes of /v1/health/service (Service.Address left empty)."""
    agent = FakeConsulAgent(node_address="10.1.2.3")
    await agent.start()
    async with httpx.AsyncClient(base_url=agent.addr) as raw:
        body = {"ID": "w9", "Name": "modelserve-worker", "Port": 7000, "Tags": None}
        assert (await raw.put("/v1/agent/service/register", json=body)).status_code == 200
    consul = ConsulDiscovery(agent.addr)
    [instance] = await consul.resolve("worker")
    assert (instance.address, instance.instance_id, instance.tags) == ("10.1.2.3:7000", "w9", ())
    await consul.close()
    await agent.close()


async def test_unix_socket_address(tmp_path: Path) -> None:
    """Stand-in: served on a unix socket, as CONSUL_HTTP_ADDR=unix:///path allows."""
    agent = FakeConsulAgent()
    path = str(tmp_path / "consul.sock")
    await agent.start_unix(path)
    consul = ConsulDiscovery(f"unix://{path}")
    assert await consul.resolve("worker") == []
    assert agent.requests[0].path == "/v1/health/service/modelserve-worker"
    await consul.close()
    await agent.close()


async def test_unreachable_agent_is_unavailable() -> None:
    """No stand-in: a closed port, to see the error type and that the token stays out of it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    consul = ConsulDiscovery(f"127.0.0.1:{port}", token="hunter2")
    with pytest.raises(UnavailableError) as caught:
        await consul.register(Registration("worker", "w1", "127.0.0.1", 5000))
    assert "hunter2" not in caught.value.message
    await consul.close()
    with pytest.raises(UnavailableError, match="closed"):
        await consul.resolve("worker")


def test_address_forms() -> None:
    """No stand-in: the CONSUL_HTTP_ADDR forms."""
    assert _split_addr("127.0.0.1:8500")[:2] == ("http://127.0.0.1:8500", None)
    assert _split_addr("https://consul:8501/")[:2] == ("https://consul:8501", None)
    assert _split_addr("[::1]:8500")[0] == "http://[::1]:8500"
    assert _split_addr("unix:///run/consul.sock")[:2] == ("http://consul", "/run/consul.sock")
    assert _split_addr("http://user:pw@consul:8500")[2] == "http://consul:8500"
    for bad in ("", "ftp://consul", "unix://relative.sock", "http://:8500"):
        with pytest.raises(ValueError):
            _split_addr(bad)


def test_constructor_refuses_bad_settings() -> None:
    """No stand-in: settings Consul would reject or misread."""
    kwargs: dict[str, Any]
    for kwargs in (
        {"wait": "11m"},
        {"wait": "30"},
        {"deregister_critical_after": "ten minutes"},
        {"check_interval_s": 0},
        {"failures_before_critical": -1},
    ):
        with pytest.raises(ValueError):
            ConsulDiscovery(**kwargs)


def test_durations() -> None:
    """No stand-in: Go duration strings both ways."""
    assert parse_duration("1m30s") == 90
    assert parse_duration("250ms") == 0.25
    assert parse_duration("0") == 0
    assert [format_duration(x) for x in (5, 2, 0.1, 1.5, 0.0001)] == [
        "5s",
        "2s",
        "100ms",
        "1500ms",
        "100us",
    ]
    for bad in ("", "5", "5 s", "s", "-1s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


async def test_close_ends_running_watches(agent: FakeConsulAgent) -> None:
    """Stand-in: a blocking query in flight when the backend is closed."""
    consul = fast(agent.addr)
    watcher = Watcher(consul, "worker")
    await eventually(lambda: _assert(len(watcher.seen) == 1))
    await asyncio.sleep(0.1)  # now parked in a blocking query
    await consul.close()
    await asyncio.wait_for(watcher.task, 2)  # ends by itself, no error, no cancel
    assert watcher.seen == [[]]


# --- T32: registrations reconciled after the agent loses them ------------------------------


async def test_an_agent_that_lost_our_registration_gets_it_again(
    agent: FakeConsulAgent, health_servers: list[HealthServer]
) -> None:
    """Stand-in: the agent forgets every service (restarted without its state), first while
    up, then across a stop/start on the same port; each time the reconcile loop registers the
    instance again with its latest meta, and it passes its check and is resolved again."""
    consul = fast(agent.addr, reconcile_s=0.1)
    first = reg(health_servers[0], "w1", versions="fraud:1")
    await consul.register(first)
    latest = reg(health_servers[0], "w1", versions="fraud:1,fraud:2")
    await consul.update_meta(latest)
    await eventually(lambda: _expect_count(consul, 1))

    agent.wipe()
    assert await consul.resolve("worker") == []
    await eventually(lambda: _expect_count(consul, 1), timeout=15)
    assert agent.services["w1"].definition["Meta"] == {"versions": "fraud:1,fraud:2"}
    assert consul.reregistrations == 1

    port = agent.port
    await agent.stop()
    agent.wipe()
    await asyncio.sleep(0.3)  # rounds that cannot reach the agent: logged, retried
    await agent.start(port=port)
    await eventually(lambda: _expect_count(consul, 1), timeout=15)
    assert consul.reregistrations == 2
    await consul.close()


async def test_a_deregistered_instance_is_never_registered_again(
    agent: FakeConsulAgent, health_servers: list[HealthServer]
) -> None:
    consul = fast(agent.addr, reconcile_s=0.05)
    kept, drained = reg(health_servers[0], "w1"), reg(health_servers[1], "w2")
    await consul.register(kept)
    await consul.register(drained)
    await consul.deregister(drained)  # draining: it must stay gone
    agent.wipe()
    await eventually(lambda: _assert("w1" in agent.services), timeout=15)
    looks = sum(1 for r in agent.requests if r.path == "/v1/agent/service/w1")
    await eventually(  # a few more rounds went by
        lambda: _assert(sum(1 for r in agent.requests if r.path == "/v1/agent/service/w1") > looks)
    )
    assert "w2" not in agent.services
    assert not any(r.path == "/v1/agent/service/w2" for r in agent.requests)
    # A round that picked w2 up before its deregister (the race the lock closes) leaves it.
    assert await consul.reconcile(drained) is False
    assert "w2" not in agent.services
    await consul.close()


async def test_a_killed_instance_is_critical_within_interval_times_failures(
    agent: FakeConsulAgent,
) -> None:
    """T30's Consul part, against the stand-in (its real gRPC checks, its FailuresBeforeCritical
    counting; Consul's 1 s check floor lowered): a process serving health is kill -9ed; its
    check goes critical after ``failures_before_critical`` failed checks, so within
    interval x failures (+ the interval in progress at the kill), and not before
    failures - 1 intervals; resolve drops it. The router's own ejection (5 failures) and the
    supervisor's restart are T30's other parts (tests/e2e/test_e2e_drain.py)."""
    interval, failures = 0.2, 3
    consul = ConsulDiscovery(
        agent.addr,
        check_interval_s=interval,
        check_timeout_s=1.0,
        failures_before_critical=failures,
        success_before_passing=1,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HEALTH_SERVER_SCRIPT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        port = int(await asyncio.wait_for(process.stdout.readline(), 20))
        await consul.register(
            Registration(service="worker", instance_id="victim", host="127.0.0.1", port=port)
        )

        async def passing() -> None:
            assert agent.check_status("victim") == "passing"

        await eventually(passing, timeout=10)
        process.kill()  # SIGKILL
        killed = time.monotonic()
        await process.wait()
        seen: dict[str, float] = {}
        while time.monotonic() - killed < 5 and "critical" not in seen:
            seen.setdefault(agent.check_status("victim"), time.monotonic() - killed)
            await asyncio.sleep(0.01)
        assert "critical" in seen, seen
        # Counted, not at the first refused check; bounded by interval x failures (+1 interval).
        assert (failures - 1) * interval <= seen["critical"] <= (failures + 1) * interval + 0.2
        assert await consul.resolve("worker") == []
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await consul.close()


async def test_an_agent_outage_keeps_the_last_known_set_and_holds_removals_after_it(
    agent: FakeConsulAgent, health_servers: list[HealthServer]
) -> None:
    """T32, stand-in: the agent stops (transport errors) and comes back without its state
    (wiped: a dev agent, a lost data dir). Meanwhile ``resolve`` answers the last-known set and
    the watch yields nothing; on the agent's return its first answers are empty or short, and
    the watch keeps every last-known instance until the hold ends. Only then is the one that
    really went away (NOT_SERVING during the outage: critical once registered again) dropped;
    the other was registered again by the reconcile loop and never left."""
    hold = 1.5
    consul = fast(agent.addr, reconcile_s=0.3, return_hold_s=hold)
    await consul.register(reg(health_servers[0], "w1"))
    await consul.register(reg(health_servers[1], "w2"))
    seen: list[tuple[float, list[str]]] = []

    async def follow() -> None:
        async for instances in consul.watch("worker"):
            seen.append((time.monotonic(), sorted(i.instance_id for i in instances)))

    task = asyncio.create_task(follow())
    await eventually(lambda: _assert(bool(seen) and seen[-1][1] == ["w1", "w2"]), timeout=10)
    before = len(seen)

    port = agent.port
    await agent.stop()
    assert [i.instance_id for i in await consul.resolve("worker")] == ["w1", "w2"]
    await health_servers[1].set_serving(False)  # w2 goes away while nobody can tell
    await asyncio.sleep(1.5)  # > the watch's 1 s rate limit: it fails and backs off meanwhile
    agent.wipe()
    await agent.start(port=port)
    back = time.monotonic()
    await eventually(lambda: _assert(seen[-1][1] == ["w1"]), timeout=15)
    assert agent.check_status("w1") == "passing"  # registered again and in rotation
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await consul.close()
    after = seen[before:]
    # One change after the outage: w2 dropped, no sooner than the hold; w1 always there.
    assert [ids for _, ids in after] == [["w1"]], seen
    assert after[0][0] - back >= hold - 0.1, (after[0][0] - back, seen)
