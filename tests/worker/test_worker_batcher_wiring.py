"""The batcher wired into the worker: the loader gives each batchable READY version a batcher
(none for max_batch_size 0), ModelInfer goes through it, and ModelStatistics reports it.

A real ModelManager fetches real artifacts from a fake registry on a real grpc.aio server; the
worker's V2 servicer runs on another, behind the runtime's error interceptor.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio
from testsupport import eventually
from worker_testkit import FakeRegistry

from modelserve.catalog.replica import Catalog
from modelserve.channels import EndpointSet
from modelserve.discovery.static import StaticDiscovery
from modelserve.interceptors import ErrorInterceptor
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from modelserve.tensors import decode_outputs, encode_inputs
from modelserve.v2.servicer import V2Servicer
from worker.artifacts import ArtifactCache
from worker.dataplane import WorkerDataPlane
from worker.loader import ModelManager
from worker.sessions import ModelSession

RNG = np.random.default_rng(5)


def version_record(
    name: str,
    path: Path,
    width: int,
    in_name: str,
    out_name: str,
    config: registry_pb2.ServingConfig,
) -> registry_pb2.ModelVersion:
    data = path.read_bytes()
    return registry_pb2.ModelVersion(
        model=name,
        version=1,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        inputs=[common_pb2.TensorSpec(name=in_name, datatype="FP32", shape=[-1, width])],
        outputs=[common_pb2.TensorSpec(name=out_name, datatype="FP32", shape=[-1, 1])],
        config=config,
        platform="onnxruntime_onnx",
    )


@dataclass
class Worker:
    manager: ModelManager
    stub: pb_grpc.GRPCInferenceServiceStub


@pytest.fixture
async def worker(model_paths: dict[str, Path], tmp_path: Path) -> AsyncIterator[Worker]:
    batched = registry_pb2.ServingConfig(
        max_batch_size=16, max_queue_size=32, instance_count=1, warmup_iterations=1
    )
    unbatched = registry_pb2.ServingConfig(max_batch_size=0, warmup_iterations=1)
    records = [
        version_record(
            "fraud", model_paths["fraud"], 8, "transaction", "fraud_probability", batched
        ),
        version_record("tabular", model_paths["tabular"], 32, "INPUT0", "OUTPUT0", unbatched),
    ]
    fake = FakeRegistry()
    for r in records:
        fake.add(r.model, r.version, model_paths[r.model].read_bytes())
    registry = aio.server()
    registry_pb2_grpc.add_RegistryServicer_to_server(fake, registry)
    registry_port = registry.add_insecure_port("127.0.0.1:0")
    await registry.start()
    registries = EndpointSet()
    await registries.update([f"127.0.0.1:{registry_port}"])
    catalog = Catalog(StaticDiscovery({}))
    manager = ModelManager(
        catalog=catalog,
        registries=registries,
        artifacts=ArtifactCache(tmp_path / "artifacts"),
        only_models=set(),
        gpu_mem_limit=0,
        unload_grace=0,
        on_change=lambda: None,
    )
    models = [
        registry_pb2.Model(name=r.model, versions=[r], labels={"production": 1}) for r in records
    ]
    catalog.apply(registry_pb2.WatchEvent(revision=1, snapshot=True, models=models))
    server = aio.server(interceptors=[ErrorInterceptor()])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        V2Servicer(WorkerDataPlane(catalog=catalog, manager=manager, min_budget_s=0.005)), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:

        async def both_ready() -> None:
            assert len(manager.ready()) == 2, manager.status_versions()

        await eventually(both_ready)
        yield Worker(manager, pb_grpc.GRPCInferenceServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(None)
        await manager.close()
        await registries.close()
        await registry.stop(None)


def infer_request(model: str, name: str, x: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    encode_inputs(request, {name: x})
    return request


async def statistics(worker: Worker, model: str) -> pb.ModelStatistics:
    reply = await worker.stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=5)
    (stats,) = reply.model_stats
    return stats


async def test_batchable_version_gets_a_batcher_and_answers_each_caller(
    worker: Worker, model_paths: dict[str, Path]
) -> None:
    held = worker.manager.get("fraud", 1)
    assert held.batcher is not None
    rows = [1, 3, 1, 2, 1, 1, 4, 1, 2, 1, 1, 1]
    feeds = [RNG.standard_normal((n, 8)).astype(np.float32) for n in rows]
    replies = await asyncio.gather(
        *(
            worker.stub.ModelInfer(infer_request("fraud", "transaction", x), timeout=30)
            for x in feeds
        )
    )
    reference = await ModelSession.load(model_paths["fraud"], model="fraud", version=1)
    try:
        for x, reply in zip(feeds, replies, strict=True):
            want = (await reference.run({"transaction": x}))["fraud_probability"]
            got = decode_outputs(reply)["fraud_probability"]
            np.testing.assert_allclose(got, want, rtol=1e-6)
    finally:
        reference.close()

    stats = await statistics(worker, "fraud")
    s = stats.inference_stats
    assert stats.inference_count == sum(rows)
    assert s.success.count == s.queue.count == s.compute_infer.count == len(rows)
    assert 1 <= stats.execution_count <= len(rows)
    assert sum(b.compute_infer.count for b in stats.batch_stats) == stats.execution_count
    assert sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats) == sum(rows)


async def test_version_without_batch_dimension_runs_each_request_directly(
    worker: Worker,
) -> None:
    assert worker.manager.get("tabular", 1).batcher is None
    x = RNG.standard_normal((1, 32)).astype(np.float32)
    for _ in range(3):
        reply = await worker.stub.ModelInfer(infer_request("tabular", "INPUT0", x), timeout=30)
        assert decode_outputs(reply)["OUTPUT0"].shape == (1, 1)
    stats = await statistics(worker, "tabular")
    assert stats.execution_count == stats.inference_count == 3
    assert stats.inference_stats.queue.ns == 0
    assert [(b.batch_size, b.compute_infer.count) for b in stats.batch_stats] == [(1, 3)]


async def test_oversized_and_past_deadline_requests_get_their_codes_and_worker_serves_on(
    worker: Worker,
) -> None:
    too_big = infer_request("fraud", "transaction", np.zeros((17, 8), np.float32))
    with pytest.raises(aio.AioRpcError) as info:
        await worker.stub.ModelInfer(too_big, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ok = infer_request("fraud", "transaction", np.zeros((2, 8), np.float32))
    with pytest.raises(aio.AioRpcError) as info:
        await worker.stub.ModelInfer(ok, timeout=0.001)  # below the worker's minimum budget
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    reply = await worker.stub.ModelInfer(ok, timeout=30)
    assert decode_outputs(reply)["fraud_probability"].shape == (2, 1)
    stats = await statistics(worker, "fraud")
    assert stats.inference_stats.fail.count == 1  # the oversized one; the other never started
