"""The REST face's deadline and lifecycle on real services (registry, worker, router,
gateway built by their own Runtime code in this process, so one gateway can be given a
tiny minimum deadline and then be drained while a client watches)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from testsupport import eventually

import gateway
import registry
import router
import worker
from modelserve.cli.registry_client import push_version
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2_grpc
from modelserve.server import Runtime, start_runtime

FAST = {"port": 0, "metrics_port": -2, "drain_seconds": 0.0, "shutdown_grace_seconds": 2.0}
BODY = json.dumps(
    {"inputs": [{"name": "transaction", "datatype": "FP32", "shape": [1, 8], "data": [1] * 8}]}
)


async def http(address: str, method: str, path: str, body: str = "") -> tuple[int, str]:
    """One request on its own connection: (status, body)."""
    host, port = address.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    data = body.encode()
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    fields = dict(line.lower().split(": ", 1) for line in head.split("\r\n")[1:] if line)
    length = int(fields["content-length"])
    payload = (await reader.readexactly(length)).decode()
    writer.close()
    return int(head.split()[1]), payload


@pytest.fixture(scope="module")
async def services(
    tmp_path_factory: pytest.TempPathFactory, demo_dir: Path
) -> AsyncIterator[tuple[Runtime, list[Runtime]]]:
    data = tmp_path_factory.mktemp("rest-lifecycle")
    inner: list[Runtime] = []
    reg = await start_runtime(
        registry.SPEC, registry.RegistrySettings(**FAST, data_dir=str(data / "registry"))
    )
    inner.append(reg)
    reg_addr = f"127.0.0.1:{reg.port}"
    wrk = await start_runtime(
        worker.SPEC,
        worker.WorkerSettings(**FAST, registry_addr=reg_addr, data_dir=str(data / "worker")),
    )
    inner.append(wrk)
    rtr = await start_runtime(
        router.SPEC,
        router.RouterSettings(**FAST, registry_addr=reg_addr, worker_addrs=f"127.0.0.1:{wrk.port}"),
    )
    inner.append(rtr)
    gw = await start_runtime(
        gateway.SPEC,
        gateway.GatewaySettings(
            **{**FAST, "drain_seconds": 1.0},
            registry_addr=reg_addr,
            router_addr=f"127.0.0.1:{rtr.port}",
            http_port=-1,
            min_deadline_seconds=0.000001,  # so a client's 1 µs deadline is kept as sent
        ),
    )
    async with grpc.aio.insecure_channel(reg_addr) as channel:
        await push_version(
            registry_pb2_grpc.RegistryStub(channel), "fraud", demo_dir / "fraud_v1.onnx",
            labels=["production"],
        )  # fmt: skip
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def ready() -> None:
            assert (await stub.ModelReady(pb.ModelReadyRequest(name="fraud"), timeout=2)).ready

        await eventually(ready, timeout=60)
    try:
        yield gw, inner
    finally:
        if not gw.stopping.is_set():
            await gw.shutdown()
        for runtime in reversed(inner):
            await runtime.shutdown()


async def test_the_timeout_parameter_is_the_deadline(
    services: tuple[Runtime, list[Runtime]],
) -> None:
    gw, _ = services
    address = f"127.0.0.1:{gw.ports['http']}"
    assert (await http(address, "POST", "/v2/models/fraud/infer", BODY))[0] == 200
    rushed = json.loads(BODY)
    rushed["parameters"] = {"timeout": 1}  # µs, as tritonclient.http's timeout= sends it
    status, body = await http(address, "POST", "/v2/models/fraud/infer", json.dumps(rushed))
    assert status == 504, body
    assert "deadline exceeded" in json.loads(body)["error"]
    rushed["parameters"] = {"timeout": -5}
    status, body = await http(address, "POST", "/v2/models/fraud/infer", json.dumps(rushed))
    assert status == 400 and "timeout" in json.loads(body)["error"]


async def test_over_the_admission_limit_infer_is_503_but_health_answers(
    services: tuple[Runtime, list[Runtime]],
) -> None:
    _, inner = services
    reg, rtr = inner[0], inner[2]
    full = await start_runtime(
        gateway.SPEC,
        gateway.GatewaySettings(
            **FAST,
            registry_addr=f"127.0.0.1:{reg.port}",
            router_addr=f"127.0.0.1:{rtr.port}",
            http_port=-1,
            max_concurrent_rpcs=0,  # every counted request is over the limit
        ),
    )
    try:
        address = f"127.0.0.1:{full.ports['http']}"
        assert await http(address, "GET", "/v2/health/live") == (200, "")
        await eventually(lambda: _ready(address), timeout=10)
        status, body = await http(address, "POST", "/v2/models/fraud/infer", BODY)
        assert status == 503 and json.loads(body)["error"].startswith("server busy")
    finally:
        await full.shutdown()


async def _ready(address: str) -> None:
    assert await http(address, "GET", "/v2/health/ready") == (200, "")


async def test_draining_says_not_ready_serves_on_then_closes(
    services: tuple[Runtime, list[Runtime]],
) -> None:
    gw, _ = services
    address = f"127.0.0.1:{gw.ports['http']}"
    assert await http(address, "GET", "/v2/health/ready") == (200, "")
    stopping = asyncio.create_task(gw.shutdown())  # what SIGTERM runs
    await eventually(lambda: _not_ready(address), timeout=5)
    # Within the drain wait (1 s) requests are still answered: clients move away, none fail.
    assert (await http(address, "POST", "/v2/models/fraud/infer", BODY))[0] == 200
    await stopping
    with pytest.raises(OSError):
        await asyncio.open_connection(*address.split(":"))


async def _not_ready(address: str) -> None:
    assert await http(address, "GET", "/v2/health/ready") == (400, "")
