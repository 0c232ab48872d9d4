"""ConsulDiscovery against a REAL Consul agent (``consul agent -dev`` on free loopback ports),
when a ``consul`` binary is on PATH; skipped, saying so, where none is.

The stand-in (tests/fakes/consul_agent.py, test_consul.py) covers the adapter's logic in
depth; this test checks the parts only the real agent can confirm (docs/architecture.md,
"Discovery: what was verified where"): the register body is accepted as we send it, the
agent itself runs our gRPC health check against a real grpc.aio server and moves the
instance in and out of /v1/health/service?passing, blocking queries wake our watch on each
change, meta updates keep the check's status, and deregister removes the service.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from testsupport import eventually

from modelserve.discovery import Instance, Registration
from modelserve.discovery.consul import ConsulDiscovery

CONSUL = shutil.which("consul")
pytestmark = pytest.mark.skipif(
    CONSUL is None,
    reason="no `consul` binary on PATH: this test runs against a real Consul agent "
    "(install Consul, or run it where docker compose brings one); the stand-in agent "
    "tests (test_consul.py) still run",
)
AGENT_START_S = 60.0  # a cold agent elects itself leader in a few seconds


def free_ports(n: int) -> list[int]:
    """Ports free for TCP and UDP now (serf listens on both)."""
    ports: list[int] = []
    held: list[socket.socket] = []
    while len(ports) < n:
        tcp = socket.socket()
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(("127.0.0.1", port))
        except OSError:
            tcp.close()
            udp.close()
            continue
        held += [tcp, udp]
        ports.append(port)
    for s in held:
        s.close()
    return ports


def consul_version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"Consul v(\d+)\.(\d+)", out)
    return (int(found[1]), int(found[2])) if found else (0, 0)


@pytest.fixture
def consul_agent(tmp_path: Path) -> Iterator[str]:
    """A `consul agent -dev` on free loopback ports; yields its HTTP address."""
    assert CONSUL is not None
    http, dns, grpc_port, grpc_tls, serf_lan, serf_wan, server = free_ports(7)
    ports = {
        "http": http, "dns": dns, "grpc": grpc_port, "serf_lan": serf_lan,
        "serf_wan": serf_wan, "server": server,
    }  # fmt: skip
    if consul_version(CONSUL) >= (1, 14):  # -dev opens a gRPC TLS port too since 1.14
        ports["grpc_tls"] = grpc_tls
    config = tmp_path / "consul.json"
    config.write_text(json.dumps({"ports": ports, "log_level": "INFO"}))
    log = (tmp_path / "consul.log").open("wb")
    agent = subprocess.Popen(
        [CONSUL, "agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1",
         f"-config-file={config}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    addr = f"http://127.0.0.1:{http}"
    try:
        _wait_for_leader(addr, agent, tmp_path / "consul.log")
        yield addr
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        log.close()


def _wait_for_leader(addr: str, agent: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + AGENT_START_S
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise AssertionError(f"consul exited with {agent.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{addr}/v1/status/leader", timeout=1).json():
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"consul elected no leader in {AGENT_START_S:.0f}s:\n{log.read_text()}")


class HealthServer:
    """A real grpc.aio server serving only grpc.health.v1 on a port the OS picks."""

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()
        self.server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def set_serving(self, serving: bool) -> None:
        response = health_pb2.HealthCheckResponse
        await self.servicer.set("", response.SERVING if serving else response.NOT_SERVING)


@pytest.fixture
async def health_server() -> AsyncIterator[HealthServer]:
    server = HealthServer()
    await server.server.start()
    await server.set_serving(True)
    yield server
    await server.server.stop(grace=None)


async def test_register_watch_health_and_deregister_on_a_real_agent(
    consul_agent: str, health_server: HealthServer
) -> None:
    # Consul's real floors apply: checks run at most every 1 s.
    consul = ConsulDiscovery(
        consul_agent,
        check_interval_s=1,
        check_timeout_s=1,
        success_before_passing=0,
        failures_before_critical=0,
        wait="2s",
    )
    seen: list[list[Instance]] = []

    async def follow() -> None:
        async for instances in consul.watch("worker"):
            seen.append(instances)

    watcher = asyncio.create_task(follow())
    reg = Registration(
        service="worker",
        instance_id="worker-real-1",
        host="127.0.0.1",
        port=health_server.port,
        meta={"ready_versions": ""},
        tags=("v1",),
    )
    try:
        await consul.register(reg)

        async def passing_with(meta: dict[str, str]) -> None:
            assert seen and [(i.instance_id, dict(i.meta)) for i in seen[-1]] == [
                ("worker-real-1", meta)
            ]

        # The agent's own gRPC check passes: the watch (a blocking query) sees the instance.
        await eventually(lambda: passing_with({"ready_versions": ""}), timeout=30)
        assert seen[-1][0].address == f"127.0.0.1:{health_server.port}"
        assert seen[-1][0].tags == ("v1",)

        # NOT_SERVING fails the agent's check: out of the passing set.
        await health_server.set_serving(False)
        await eventually(_empty(seen), timeout=30)
        await health_server.set_serving(True)
        await eventually(lambda: passing_with({"ready_versions": ""}), timeout=30)

        # A meta update is an upsert that keeps the check passing (no flap out of rotation).
        back = len(seen)
        await consul.update_meta(dataclasses.replace(reg, meta={"ready_versions": "fraud:1"}))
        await eventually(lambda: passing_with({"ready_versions": "fraud:1"}), timeout=30)
        assert all(seen[back:]), f"the meta update took the instance out: {seen[back:]}"

        await consul.deregister(reg)
        await eventually(_empty(seen), timeout=30)
        async with httpx.AsyncClient(base_url=consul_agent, timeout=5) as client:
            services = (await client.get("/v1/agent/services")).json()
        assert "worker-real-1" not in services
        await consul.deregister(reg)  # already gone: the agent's 404 is not an error
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await consul.close()


def _empty(seen: list[list[Instance]]) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        assert seen and seen[-1] == []

    return check
