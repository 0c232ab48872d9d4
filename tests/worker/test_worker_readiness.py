"""Worker readiness (T26, T27, T28): the real worker runtime (``start_runtime(worker.SPEC)``,
its health servicer, its ModelManager and real ONNX Runtime sessions) in this event loop,
against a fake registry on a real grpc.aio server that serves Watch (one snapshot) and
FetchArtifact, and can hold a fetch (``gates``) or fail it (``failures``, or no artifact).

- strict readiness: health "" is NOT_SERVING while a deployed version loads, SERVING once each
  is READY or FAILED; a model that cannot load has its own health name NOT_SERVING while the
  process answers and serves the other model;
- ``model_load_retry_count``: a failed load is tried exactly 1 + count times, and a transient
  failure is ridden out;
- grpc.health.v1 Watch emits the current status at once and then each change, for "" and for
  a model's name; Check("nope") is NOT_FOUND;
- SIGTERM (``Runtime.shutdown``) while a model is still loading does not hang.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from slowmodel import WIDTH as SLOW_WIDTH
from slowmodel import iterations_for, slow_model
from testsupport import eventually
from worker_testkit import FakeRegistry

import worker
from modelserve.proto.modelserve.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from modelserve.server import Runtime, start_runtime

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
Status = health_pb2.HealthCheckResponse.ServingStatus.ValueType


def fraud_model(name: str, path: Path, *, sha256: str = "") -> registry_pb2.Model:
    data = path.read_bytes()
    record = registry_pb2.ModelVersion(
        model=name,
        version=1,
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        inputs=[common_pb2.TensorSpec(name="transaction", datatype="FP32", shape=[-1, 8])],
        outputs=[common_pb2.TensorSpec(name="fraud_probability", datatype="FP32", shape=[-1, 1])],
        config=registry_pb2.ServingConfig(max_batch_size=4, warmup_iterations=1),
        platform="onnxruntime_onnx",
    )
    return registry_pb2.Model(name=name, versions=[record], labels={"production": 1})


@dataclass
class Suite:
    fake: FakeRegistry
    registry_port: int
    tmp: Path

    async def worker(self, **overrides: object) -> Runtime:
        settings = worker.WorkerSettings(
            port=0,
            metrics_port=-2,
            registry_addr=f"127.0.0.1:{self.registry_port}",
            data_dir=str(self.tmp / "worker"),
            drain_seconds=0,
            shutdown_grace_seconds=1,
            **overrides,  # type: ignore[arg-type]
        )
        return await start_runtime(worker.SPEC, settings)


@pytest.fixture
async def suite(model_paths: dict[str, Path], tmp_path: Path) -> AsyncIterator[Suite]:
    """A fake registry holding ``fraud`` (loads) and ``broken`` (no artifact: fails)."""
    path = model_paths["fraud"]
    # broken's sha256 is its own: the artifact cache is content-addressed, so a shared one
    # would let broken load from fraud's cached file.
    broken = fraud_model("broken", path, sha256=hashlib.sha256(b"broken").hexdigest())
    fake = FakeRegistry(models=[broken, fraud_model("fraud", path)])
    fake.add("fraud", 1, model_paths["fraud"].read_bytes())
    server = aio.server()
    registry_pb2_grpc.add_RegistryServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Suite(fake, port, tmp_path)
    finally:
        await server.stop(None)


async def check(address: str, service: str) -> Status:
    async with aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
    return reply.status


class Watcher:
    """A grpc.health.v1 Watch stream whose statuses are collected as they come."""

    def __init__(self, address: str, service: str) -> None:
        self.seen: list[Status] = []
        self._channel = aio.insecure_channel(address)
        self._call = health_pb2_grpc.HealthStub(self._channel).Watch(
            health_pb2.HealthCheckRequest(service=service)
        )
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for reply in self._call:
            self.seen.append(reply.status)

    async def close(self) -> None:
        self._call.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._channel.close()


def fetches(fake: FakeRegistry, model: str) -> int:
    return sum(1 for m, _ in fake.calls if m == model)


async def test_health_waits_for_every_model_and_a_failed_one_has_its_own_name(
    suite: Suite,
) -> None:
    gate = suite.fake.gates["fraud"] = asyncio.Event()  # fraud's fetch waits for the test
    runtime = await suite.worker(model_load_retry_count=2)
    address = f"127.0.0.1:{runtime.port}"
    watch_all = Watcher(address, "")
    watch_fraud: Watcher | None = None
    try:

        async def both_tried() -> None:  # loads take turns: broken first, then fraud
            assert fetches(suite.fake, "broken") >= 1
            assert fetches(suite.fake, "fraud") == 1

        await eventually(both_tried, timeout=30)
        # fraud is held mid-fetch: the process answers, and says it is not ready.
        assert await check(address, "") == NOT_SERVING
        assert await check(address, "fraud") == NOT_SERVING
        assert await check(address, "broken") == NOT_SERVING
        # The name is known now, so its Watch starts at NOT_SERVING, not SERVICE_UNKNOWN.
        watch_fraud = fraud = Watcher(address, "fraud")

        async def watching() -> None:
            assert fraud.seen == [NOT_SERVING]

        await eventually(watching, timeout=5)
        gate.set()

        async def serving() -> None:
            assert await check(address, "") == SERVING
            assert await check(address, "fraud") == SERVING

        await eventually(serving, timeout=30)
        assert fetches(suite.fake, "broken") == 3  # 1 + model_load_retry_count, then FAILED
        assert await check(address, "broken") == NOT_SERVING  # live, that model not ready
        with pytest.raises(aio.AioRpcError) as info:
            await check(address, "nope")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        await asyncio.sleep(1.5)  # no fourth attempt comes later
        assert fetches(suite.fake, "broken") == 3

        # Watch: the current value at once (NOT_SERVING), then the change to SERVING.
        async def watched_change() -> None:
            assert watch_all.seen == [NOT_SERVING, SERVING]
            assert fraud.seen == [NOT_SERVING, SERVING]

        await eventually(watched_change, timeout=5)
        # SIGTERM: Watch sees NOT_SERVING at once, for the server and for each model name.
        stopping = asyncio.create_task(runtime.shutdown())

        async def watched_drain() -> None:
            assert watch_all.seen[-1] == NOT_SERVING
            assert fraud.seen[-1] == NOT_SERVING

        await eventually(watched_drain, timeout=5)
        await asyncio.wait_for(stopping, 10)
    finally:
        await watch_all.close()
        if watch_fraud is not None:
            await watch_fraud.close()
        gate.set()
        if not runtime.stopping.is_set():
            await runtime.shutdown()


async def test_a_load_that_fails_once_is_retried_and_serves(suite: Suite) -> None:
    suite.fake.failures["fraud"] = 1  # the first fetch answers UNAVAILABLE
    suite.fake.models = suite.fake.models[1:]  # fraud only
    runtime = await suite.worker()  # model_load_retry_count defaults to 1
    address = f"127.0.0.1:{runtime.port}"
    try:

        async def serving() -> None:
            assert await check(address, "fraud") == SERVING
            assert await check(address, "") == SERVING

        await eventually(serving, timeout=30)
        assert fetches(suite.fake, "fraud") == 2
    finally:
        await runtime.shutdown()


async def test_sigterm_while_a_model_is_loading_does_not_hang(suite: Suite) -> None:
    suite.fake.gates["fraud"] = asyncio.Event()  # never set: the load is stuck mid-fetch
    suite.fake.models = suite.fake.models[1:]
    runtime = await suite.worker()
    address = f"127.0.0.1:{runtime.port}"

    async def loading() -> None:
        assert fetches(suite.fake, "fraud") == 1

    await eventually(loading, timeout=10)
    assert await check(address, "") == NOT_SERVING
    started = time.monotonic()
    # drain 0 + grace 1 s; the bound is the case's "grace + 2 s" and catches a hang, not speed.
    await asyncio.wait_for(runtime.shutdown(), 3)
    assert time.monotonic() - started < 3


def ort_threads() -> list[str]:
    """The worker's ONNX Runtime executor threads still alive (ModelSession names them)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("ort-")]


async def test_sigterm_during_a_long_warmup_stops_the_run_and_leaves_no_thread(
    suite: Suite, tmp_path: Path
) -> None:
    """The load is in its warm-up, one ORT run of ~20 s: shutdown cancels the load, the run is
    terminated (ORT checks between nodes), and no executor thread outlives the stop, so the
    process can exit (a live ORT thread would hold interpreter exit until the run ends)."""
    model = slow_model(iterations_for(20.0)).SerializeToString()
    sha = suite.fake.add("slow", 1, model)
    record = registry_pb2.ModelVersion(
        model="slow",
        version=1,
        sha256=sha,
        size_bytes=len(model),
        inputs=[common_pb2.TensorSpec(name="x", datatype="FP32", shape=[-1, SLOW_WIDTH])],
        outputs=[common_pb2.TensorSpec(name="y", datatype="FP32", shape=[-1, SLOW_WIDTH])],
        config=registry_pb2.ServingConfig(max_batch_size=1, warmup_iterations=1),
        platform="onnxruntime_onnx",
    )
    suite.fake.models = [registry_pb2.Model(name="slow", versions=[record], labels={"v": 1})]
    before = set(ort_threads())
    runtime = await suite.worker()

    async def warming() -> None:
        assert set(ort_threads()) - before  # the first warm-up run has its thread

    await eventually(warming, timeout=30)
    await asyncio.sleep(0.5)
    assert await check(f"127.0.0.1:{runtime.port}", "") == NOT_SERVING
    await asyncio.wait_for(runtime.shutdown(), 3)  # grace 1 s + 2 s

    async def no_thread_left() -> None:
        assert not set(ort_threads()) - before

    await eventually(no_thread_left, timeout=2)
