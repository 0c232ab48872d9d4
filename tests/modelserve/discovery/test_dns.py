"""DNSDiscovery: names whose records change become added and removed instances.

Resolution is controlled by the test two ways: an injected resolver function (exact control
of each answer, failures included), and a real UDP DNS server (tests/fakes/dns_server.py) the
backend queries through dnspython, the ``dns_server`` setting's path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from fakes.dns_server import DNSServer
from testsupport import eventually

from modelserve.channels import EndpointSet, follow
from modelserve.discovery import Instance
from modelserve.discovery.dns import DNSDiscovery, NameNotFound, split_host_port
from modelserve.server import make_discovery
from modelserve.settings import SettingsError, load_settings
from router.settings import RouterSettings


class Records:
    """An injected resolver: answers from ``ips``; raises what ``error`` holds."""

    def __init__(self) -> None:
        self.ips: dict[str, list[str]] = {}
        self.error: Exception | None = None
        self.calls = 0

    async def __call__(self, host: str) -> list[str]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        if host not in self.ips:
            raise NameNotFound(host)
        return list(self.ips[host])


def addresses(instances: list[Instance]) -> list[str]:
    return [i.address for i in instances]


@pytest.fixture
async def dns_server() -> AsyncIterator[DNSServer]:
    server = DNSServer()
    await server.start()
    yield server
    server.close()


async def test_one_instance_per_record_sorted_and_deduplicated() -> None:
    records = Records()
    records.ips["worker.ns.svc"] = ["10.0.0.2", "10.0.0.1", "10.0.0.2", "fd00::1"]
    d = DNSDiscovery({"worker": ["worker.ns.svc:8201", "10.0.0.9:8201"]}, resolver=records)
    found = await d.resolve("worker")
    assert addresses(found) == ["10.0.0.1:8201", "10.0.0.2:8201", "10.0.0.9:8201", "[fd00::1]:8201"]
    assert found[0] == Instance("worker", "worker-10.0.0.1:8201", "10.0.0.1:8201")
    assert await d.resolve("router") == []
    await d.close()


async def test_missing_name_is_empty_but_a_failed_lookup_keeps_the_last_answer() -> None:
    records = Records()
    records.ips["worker"] = ["10.0.0.1"]
    d = DNSDiscovery({"worker": ["worker:8201"]}, resolver=records)
    assert addresses(await d.resolve("worker")) == ["10.0.0.1:8201"]
    records.error = OSError("timed out")
    assert addresses(await d.resolve("worker")) == ["10.0.0.1:8201"]
    records.error = None
    del records.ips["worker"]  # NXDOMAIN: a headless Service with no ready pods
    assert await d.resolve("worker") == []
    await d.close()


async def test_watch_adds_and_removes_instances_as_records_change() -> None:
    records = Records()
    records.ips["worker"] = ["10.0.0.1"]
    d = DNSDiscovery({"worker": ["worker:8201"]}, refresh_s=0.05, resolver=records)
    seen: list[list[str]] = []

    async def collect() -> None:
        async for instances in d.watch("worker"):
            seen.append(addresses(instances))

    task = asyncio.create_task(collect())
    await eventually(lambda: _assert(seen == [["10.0.0.1:8201"]]))
    records.ips["worker"] = ["10.0.0.1", "10.0.0.2"]  # scaled out
    await eventually(lambda: _assert(seen[-1] == ["10.0.0.1:8201", "10.0.0.2:8201"]))
    records.ips["worker"] = ["10.0.0.2"]  # a pod went away
    await eventually(lambda: _assert(seen[-1] == ["10.0.0.2:8201"]))
    calls = records.calls
    await eventually(lambda: _assert(records.calls > calls + 3))
    assert len(seen) == 3, "an unchanged answer is not yielded again"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await d.close()


async def test_suspect_re_resolves_before_the_period() -> None:
    records = Records()
    records.ips["worker"] = ["10.0.0.1"]
    d = DNSDiscovery({"worker": ["worker:8201"]}, refresh_s=60, min_refresh_s=0.1, resolver=records)
    seen: list[list[str]] = []

    async def collect() -> None:
        async for instances in d.watch("worker"):
            seen.append(addresses(instances))

    task = asyncio.create_task(collect())
    await eventually(lambda: _assert(len(seen) == 1))
    records.ips["worker"] = ["10.0.0.3"]  # the pod was replaced under the name
    d.suspect("worker", "10.0.0.1:8201")
    await eventually(lambda: _assert(seen[-1] == ["10.0.0.3:8201"]), timeout=3)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await d.close()


async def test_an_ejected_endpoint_makes_follow_look_again_early() -> None:
    """The EndpointSet path: real channels, an ejection asks discovery to re-resolve."""
    records = Records()
    records.ips["router"] = ["127.0.0.1"]
    d = DNSDiscovery({"router": ["router:1"]}, refresh_s=60, min_refresh_s=0.05, resolver=records)
    endpoints = EndpointSet()
    task = asyncio.create_task(follow(d, "router", endpoints))
    await eventually(lambda: _assert(list(endpoints.endpoints) == ["127.0.0.1:1"]))
    records.ips["router"] = ["127.0.0.2", "127.0.0.3"]
    endpoint = endpoints.endpoints["127.0.0.1:1"]
    while not endpoint.record_failure():
        pass
    await eventually(
        lambda: _assert(sorted(endpoints.endpoints) == ["127.0.0.2:1", "127.0.0.3:1"]), timeout=3
    )
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await endpoints.close()
    await d.close()


async def test_through_a_real_dns_server(dns_server: DNSServer) -> None:
    dns_server.records["worker.modelserve.svc.cluster.local"] = ["10.1.0.1", "fd00::2"]
    d = DNSDiscovery(
        {"worker": ["worker.modelserve.svc.cluster.local:8201"]},
        refresh_s=0.05,
        server=dns_server.address,
    )
    seen: list[list[str]] = []

    async def collect() -> None:
        async for instances in d.watch("worker"):
            seen.append(addresses(instances))

    task = asyncio.create_task(collect())
    await eventually(lambda: _assert(seen == [["10.1.0.1:8201", "[fd00::2]:8201"]]))
    dns_server.records["worker.modelserve.svc.cluster.local"] = ["10.1.0.1", "10.1.0.7"]
    await eventually(lambda: _assert(seen[-1] == ["10.1.0.1:8201", "10.1.0.7:8201"]))
    dns_server.failing = True  # SERVFAIL: keep what we know
    queries = dns_server.queries
    await eventually(lambda: _assert(dns_server.queries > queries + 4))
    assert seen[-1] == ["10.1.0.1:8201", "10.1.0.7:8201"]
    dns_server.failing = False
    del dns_server.records["worker.modelserve.svc.cluster.local"]  # NXDOMAIN: none ready
    await eventually(lambda: _assert(seen[-1] == []))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await d.close()


async def test_the_system_resolver_reads_hosts_and_passes_ip_literals() -> None:
    d = DNSDiscovery({"worker": ["localhost:8201", "192.0.2.1:8201"]})
    found = addresses(await d.resolve("worker"))
    assert "127.0.0.1:8201" in found and "192.0.2.1:8201" in found
    nowhere = DNSDiscovery({"worker": ["no-such-name.invalid:8201"]})
    assert await nowhere.resolve("worker") == []


def test_settings_select_dns_with_its_drain() -> None:
    env = {
        "MODELSERVE_DISCOVERY": "dns",
        "MODELSERVE_WORKER_ADDRS": "worker.modelserve.svc.cluster.local:8201",
        "MODELSERVE_DNS_REFRESH_SECONDS": "2",
    }
    settings = load_settings(RouterSettings, [], env)
    assert isinstance(make_discovery(settings), DNSDiscovery)
    assert settings.resolved_drain_seconds() == 5.0
    with pytest.raises(SettingsError):
        load_settings(RouterSettings, [], {**env, "MODELSERVE_DNS_REFRESH_SECONDS": "0"})


@pytest.mark.parametrize("bad", ["worker", "worker:", ":8201", "worker:99999", "[fd00::1]8201"])
def test_names_need_a_port(bad: str) -> None:
    with pytest.raises(ValueError, match="name:port"):
        split_host_port(bad)


async def _assert(condition: bool) -> None:
    assert condition


async def test_the_registry_finds_gateways_for_canaries_by_its_gateway_addrs() -> None:
    """Consul lists every gateway; with static or dns discovery the registry's canary reader
    resolves "gateway" from gateway_addrs (a headless Service name in Kubernetes)."""
    from registry.settings import RegistrySettings

    env = {"MODELSERVE_DISCOVERY": "dns", "MODELSERVE_GATEWAY_ADDRS": "10.0.0.5:8001"}
    discovery = make_discovery(load_settings(RegistrySettings, [], env))
    assert addresses(await discovery.resolve("gateway")) == ["10.0.0.5:8001"]
    unset = make_discovery(load_settings(RegistrySettings, [], {}))
    assert await unset.resolve("gateway") == []
