"""The direct lane through real processes (gateway/direct.py): a demo model's requests go
from the gateway straight to the worker (the router's ModelInfer count does not move) and are
counted per version in the gateway's VersionStats, as a router counts them, so a canary still
sees every call; a version with a prediction cache still goes through the router."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import numpy as np
import onnx
import pytest
from testsupport import eventually

from modelserve.cli import demo_models
from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import (
    gateway_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    router_pb2,
)
from modelserve.tensors import encode_inputs


def router_infers(suite: Suite) -> float:
    port = suite.processes["router"].metrics_port
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modelserve_rpc_requests_total{") and 'method="ModelInfer"' in line
    )


async def gateway_counts(suite: Suite, model: str) -> dict[int, tuple[int, int]]:
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stats = await gateway_pb2_grpc.GatewayControlStub(channel).VersionStats(
            router_pb2.VersionStatsRequest(model=model), timeout=5
        )
    return {v.version: (v.requests, v.errors) for v in stats.versions}


def fraud_request(model: str = "fraud") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    encode_inputs(request, {"transaction": np.ones((1, 8), np.float32)})
    return request


async def test_a_plain_version_skips_the_router_and_is_counted_at_the_gateway(
    suite: Suite, gateway: pb_grpc.GRPCInferenceServiceStub
) -> None:
    await gateway.ModelInfer(fraud_request(), timeout=10)  # the lane has the worker's status
    routed, counted = router_infers(suite), await gateway_counts(suite, "fraud")
    for _ in range(20):
        await gateway.ModelInfer(fraud_request(), timeout=10)
    assert router_infers(suite) == routed  # not one through the router
    after = await gateway_counts(suite, "fraud")
    served = sum(r for r, _ in after.values()) - sum(r for r, _ in counted.values())
    assert served == 20 and all(e == 0 for _, e in after.values()), (counted, after)


@pytest.fixture(scope="module")
async def cached_model(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("direct") / "fraud.onnx"
    onnx.save(demo_models.fraud(1), path)
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        await push_version(
            registry_pb2_grpc.RegistryStub(channel),
            "direct_cached",
            path,
            labels=["production"],
            config=registry_pb2.ServingConfig(
                prediction_cache=registry_pb2.PredictionCache(enabled=True, ttl_seconds=60)
            ),
        )
    return "direct_cached"


async def test_a_version_with_router_work_still_goes_through_the_router(
    suite: Suite, gateway: pb_grpc.GRPCInferenceServiceStub, cached_model: str
) -> None:
    async def served() -> None:
        await gateway.ModelInfer(fraud_request(cached_model), timeout=5)

    await eventually(served, timeout=60)
    routed = router_infers(suite)
    for _ in range(5):
        await gateway.ModelInfer(fraud_request(cached_model), timeout=10)
    assert router_infers(suite) == routed + 5


def worker_series(suite: Suite) -> dict[str, float]:
    port = suite.processes["worker"].metrics_port
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modelserve_rpc_")
    }


async def test_direct_calls_travel_as_messages_of_one_stream_and_count_as_model_infers(
    suite: Suite, gateway: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """The stream lane (gateway/stream_lane.py, on by default): the gateway keeps one
    WorkerLane.Open stream to the worker, and the worker counts each message as the
    ModelInfer it carries (RPC metrics, admission and auth run per message)."""
    await gateway.ModelInfer(fraud_request(), timeout=10)
    infers = 'modelserve_rpc_requests_total{code="OK",method="ModelInfer",service="worker"}'
    before = worker_series(suite)
    for _ in range(10):
        await gateway.ModelInfer(fraud_request(), timeout=10)
    after = worker_series(suite)
    assert after[infers] - before.get(infers, 0.0) == 10, (before, after)
    open_streams = 'modelserve_rpc_in_flight{method="Open",service="worker"}'
    assert after[open_streams] == 1, after  # one stream carried them all
    opened = 'modelserve_rpc_requests_total{code="OK",method="Open",service="worker"}'
    assert after.get(opened, 0.0) == before.get(opened, 0.0)  # none opened, none ended
