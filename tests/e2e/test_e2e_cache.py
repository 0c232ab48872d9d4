"""The router's prediction cache through real processes: a hit skips the worker (its
statistics do not move), moving a label never answers from the old version's cache, a Redis
cache is shared by routers, and a router whose Redis is down still serves and says so in its
metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from testsupport import eventually

from modelserve.cli import demo_models
from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import Suite, wait_serving
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc
from modelserve.tensors import decode_outputs, encode_inputs

CACHED = "cache_fraud"
MOVING = "cache_labels"
REDIS = "redis://127.0.0.1:6379/0"


def cached_config() -> registry_pb2.ServingConfig:
    return registry_pb2.ServingConfig(
        prediction_cache=registry_pb2.PredictionCache(enabled=True, ttl_seconds=600)
    )


def request_for(model: str, x: np.ndarray, request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    encode_inputs(request, {"transaction": x})
    return request


def reference(version: int, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        demo_models.fraud(version).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (out,) = session.run(["fraud_probability"], {"transaction": x})
    return np.asarray(out)


def metrics_text(port: int | None) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric(port: int | None, name: str, **labels: str) -> float:
    """A counter's value (0 before it was first incremented); labels must all match."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in metrics_text(port).splitlines():
        if line.startswith(name + "{") and all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def push(registry: str, model: str, path: Path, labels: list[str]) -> int:
    async with grpc.aio.insecure_channel(registry) as channel:
        version = await push_version(
            registry_pb2_grpc.RegistryStub(channel),
            model,
            path,
            labels=labels,
            config=cached_config(),
        )
    return version.version


async def worker_inferences(gateway: pb_grpc.GRPCInferenceServiceStub, model: str) -> int:
    reply = await gateway.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=10)
    return sum(s.inference_count for s in reply.model_stats)


async def wait_ready(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> None:
    async def ready() -> None:
        assert (await stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=2)).ready

    await eventually(ready, timeout=60)


@pytest.fixture(scope="module")
async def cached_model(suite: Suite, demo_dir: Path) -> str:
    await push(suite.address("registry"), CACHED, demo_dir / "fraud_v1.onnx", ["production"])
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        await wait_ready(pb_grpc.GRPCInferenceServiceStub(channel), CACHED)
    return CACHED


async def test_a_hit_skips_the_worker(
    cached_model: str, gateway: pb_grpc.GRPCInferenceServiceStub, suite: Suite
) -> None:
    port = suite.processes["router"].metrics_port
    x = np.random.default_rng(11).standard_normal((2, 8)).astype(np.float32)
    first = await gateway.ModelInfer(request_for(cached_model, x, "first"), timeout=10)
    np.testing.assert_allclose(decode_outputs(first)["fraud_probability"], reference(1, x))

    async def hit() -> None:  # the answer is stored just after it was returned
        hits = metric(port, "modelserve_prediction_cache_hits_total", model=cached_model)
        await gateway.ModelInfer(request_for(cached_model, x), timeout=10)
        assert metric(port, "modelserve_prediction_cache_hits_total", model=cached_model) > hits

    await eventually(hit, timeout=10)
    before = await worker_inferences(gateway, cached_model)
    again = await gateway.ModelInfer(request_for(cached_model, x, "again"), timeout=10)
    assert await worker_inferences(gateway, cached_model) == before
    assert again.id == "again" and again.model_version == first.model_version
    assert again.outputs == first.outputs
    assert again.raw_output_contents == first.raw_output_contents

    # Another input is a miss: the worker runs it.
    other = await gateway.ModelInfer(request_for(cached_model, x * 2), timeout=10)
    np.testing.assert_allclose(decode_outputs(other)["fraud_probability"], reference(1, x * 2))
    assert await worker_inferences(gateway, cached_model) == before + 2  # counted per row


async def test_a_label_move_is_never_answered_from_the_old_versions_cache(
    gateway: pb_grpc.GRPCInferenceServiceStub, suite: Suite, demo_dir: Path
) -> None:
    registry = suite.address("registry")
    await push(registry, MOVING, demo_dir / "fraud_v1.onnx", ["production"])
    v2 = await push(registry, MOVING, demo_dir / "fraud_v2.onnx", [])
    await wait_ready(gateway, MOVING)
    port = suite.processes["router"].metrics_port
    x = np.random.default_rng(12).standard_normal((1, 8)).astype(np.float32)

    async def cached_v1() -> None:
        hits = metric(port, "modelserve_prediction_cache_hits_total", model=MOVING, version="1")
        reply = await gateway.ModelInfer(request_for(MOVING, x), timeout=10)
        assert reply.model_version == "1"
        np.testing.assert_allclose(decode_outputs(reply)["fraud_probability"], reference(1, x))
        assert metric(port, "modelserve_prediction_cache_hits_total", model=MOVING, version="1") > (
            hits
        )

    await eventually(cached_v1, timeout=10)
    async with grpc.aio.insecure_channel(registry) as channel:
        await registry_pb2_grpc.RegistryStub(channel).SetLabel(
            registry_pb2.SetLabelRequest(model=MOVING, label="production", version=v2), timeout=10
        )

    async def wait_v2() -> None:
        await wait_ready(gateway, MOVING)  # v2 may still be warming up on the worker
        reply = await gateway.ModelInfer(request_for(MOVING, x), timeout=10)
        assert reply.model_version == str(v2)
        np.testing.assert_allclose(decode_outputs(reply)["fraud_probability"], reference(2, x))

    await eventually(wait_v2, timeout=30)
    assert not np.allclose(reference(1, x), reference(2, x))  # the check above means something


# ---- routers of our own: one with a dead Redis, two sharing a live one ------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nobody listens once it is closed


def launch(name: str, args: list[str], data: Path) -> tuple[subprocess.Popen[bytes], Path]:
    port_file = data / f"{name}.port.json"
    command = [sys.executable, "-m", "router", "--port", "0", "--port-file", str(port_file)]
    with (data / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            [*command, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return proc, port_file


def bound_ports(proc: subprocess.Popen[bytes], port_file: Path) -> tuple[int, int]:
    assert proc.poll() is None, f"{port_file.name}: exited with {proc.returncode}"
    ports = json.loads(port_file.read_text())  # FileNotFoundError until it listens
    return int(ports["port"]), int(ports["metrics_port"])


@dataclass
class Router:
    address: str
    metrics_port: int


async def serving(proc: subprocess.Popen[bytes], port_file: Path) -> Router:
    async def listening() -> tuple[int, int]:
        return bound_ports(proc, port_file)

    port, metrics_port = await eventually(listening, timeout=60)
    router = Router(f"127.0.0.1:{port}", metrics_port)
    await wait_serving(router.address, timeout=60)
    return router


def stop(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    return [proc.wait(timeout=30) for proc in procs]


@pytest.fixture(scope="module")
async def routers(
    suite: Suite, cached_model: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Router]]:
    """ "dead": Redis on a closed port; "a" and "b": one live Redis under a fresh prefix."""
    data = tmp_path_factory.mktemp("cache-routers")
    common = ["--registry-addr", suite.address("registry"), "--worker-addrs"]
    common += [suite.address("worker"), "--featurestore-addr", suite.address("featurestore")]
    prefix = f"modelserve:pc:test-{uuid.uuid4().hex}:"
    redis_args = {
        "dead": [f"redis://127.0.0.1:{closed_port()}/0"],
        "a": [REDIS, "--prediction-cache-redis-key-prefix", prefix],
        "b": [REDIS, "--prediction-cache-redis-key-prefix", prefix],
    }
    launched = {
        name: launch(f"router-{name}", [*common, "--prediction-cache-redis-url", *extra], data)
        for name, extra in redis_args.items()
    }
    try:
        yield {name: await serving(*started) for name, started in launched.items()}
    finally:
        assert stop([proc for proc, _ in launched.values()]) == [0, 0, 0]


async def test_a_router_whose_redis_is_down_still_serves_and_says_so(
    routers: dict[str, Router], gateway: pb_grpc.GRPCInferenceServiceStub
) -> None:
    dead = routers["dead"]
    x = np.random.default_rng(13).standard_normal((1, 8)).astype(np.float32)
    async with grpc.aio.insecure_channel(dead.address) as channel:
        router = pb_grpc.GRPCInferenceServiceStub(channel)
        await wait_ready(router, CACHED)
        before = await worker_inferences(gateway, CACHED)
        for _ in range(3):
            reply = await router.ModelInfer(request_for(CACHED, x), timeout=10)
            np.testing.assert_allclose(decode_outputs(reply)["fraud_probability"], reference(1, x))
    assert await worker_inferences(gateway, CACHED) == before + 3  # every one ran (1 row each)
    port = dead.metrics_port
    assert metric(port, "modelserve_prediction_cache_errors_total", backend="redis") >= 3
    assert metric(port, "modelserve_prediction_cache_misses_total", model=CACHED) == 3
    assert metric(port, "modelserve_prediction_cache_hits_total", model=CACHED) == 0


async def test_routers_share_a_redis_cache(
    routers: dict[str, Router], gateway: pb_grpc.GRPCInferenceServiceStub
) -> None:
    x = np.random.default_rng(14).standard_normal((3, 8)).astype(np.float32)
    async with grpc.aio.insecure_channel(routers["a"].address) as channel:
        a = pb_grpc.GRPCInferenceServiceStub(channel)
        await wait_ready(a, CACHED)
        first = await a.ModelInfer(request_for(CACHED, x), timeout=10)
    b_metrics = routers["b"].metrics_port
    async with grpc.aio.insecure_channel(routers["b"].address) as channel:
        b = pb_grpc.GRPCInferenceServiceStub(channel)
        await wait_ready(b, CACHED)

        async def hit_on_b() -> None:  # a's answer is stored just after a returned it
            reply = await b.ModelInfer(request_for(CACHED, x, "from-b"), timeout=10)
            assert metric(b_metrics, "modelserve_prediction_cache_hits_total") > 0
            assert reply.id == "from-b"
            assert reply.raw_output_contents == first.raw_output_contents

        await eventually(hit_on_b, timeout=10)
        before = await worker_inferences(gateway, CACHED)
        await b.ModelInfer(request_for(CACHED, x), timeout=10)
        assert await worker_inferences(gateway, CACHED) == before  # a hit never runs the model
    assert metric(b_metrics, "modelserve_prediction_cache_errors_total") == 0
