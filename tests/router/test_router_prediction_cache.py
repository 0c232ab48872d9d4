"""The prediction cache: what its key holds, hits that never reach the forwarder, TTL and
bounds of the in-process backend, and the Redis backend against a real Redis (shared, with
a TTL) and against a closed port (bypassed, counted, circuit broken)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest
from prometheus_client import REGISTRY
from router_testkit import FakeClock, spec, version

from modelserve.calls import Call
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import registry_pb2
from modelserve.tensors import MERGED_REQUESTS_PARAMETER, encode_inputs, encode_outputs
from router.cache_backends import CacheError, LocalBackend, RedisBackend, RedisClientConfig
from router.prediction_cache import PredictionCache, cache_key

CACHED = version(inputs=[spec("x", "FP32", [-1, 2]), spec("y", "INT64", [-1, 1])], cache=True)
REDIS = "redis://127.0.0.1:6379/0"


def request(x: float = 1.0, *, order: str = "xy", request_id: str = "") -> pb.ModelInferRequest:
    arrays: dict[str, np.ndarray] = {
        "x": np.full((1, 2), x, np.float32),
        "y": np.array([[3]], np.int64),
    }
    out = pb.ModelInferRequest(model_name="scorer", id=request_id)
    encode_inputs(out, {name: arrays[name] for name in order})
    return out


class Worker:
    """Stands in for the forwarder: answers 2 * x and counts the calls it got."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(
        self, req: pb.ModelInferRequest, ver: registry_pb2.ModelVersion, context: object
    ) -> pb.ModelInferResponse:
        self.calls += 1
        x = np.frombuffer(req.raw_input_contents[0], np.float32)
        response = pb.ModelInferResponse(
            model_name=ver.model, model_version=str(ver.version), id=req.id
        )
        encode_outputs(response, {"score": (x * 2).reshape(1, -1)})
        return response


def test_the_key_is_the_version_and_the_exact_input() -> None:
    base = cache_key(request(), CACHED)
    assert cache_key(request(order="yx"), CACHED) == base  # inputs in name order
    assert cache_key(request(request_id="other"), CACHED) == base  # the id is not the input
    merged = request()
    merged.parameters[MERGED_REQUESTS_PARAMETER].int64_param = 1
    assert cache_key(merged, CACHED) == base  # bookkeeping only
    assert cache_key(request(2.0), CACHED) != base
    v2 = version(inputs=list(CACHED.inputs), cache=True, number=2)
    assert cache_key(request(), v2) != base  # another version never shares an answer
    rebuilt = version(inputs=list(CACHED.inputs), cache=True, sha256="cd" * 32)
    assert cache_key(request(), rebuilt) != base  # nor another artifact under that number
    some_outputs = request()
    some_outputs.outputs.add(name="score")
    assert cache_key(some_outputs, CACHED) != base
    tuned = request()
    tuned.parameters["priority"].int64_param = 1
    assert cache_key(tuned, CACHED) != base
    reshaped = request()
    reshaped.inputs[0].shape[:] = [2, 1]
    assert cache_key(reshaped, CACHED) != base


def hits(model: str = "scorer") -> float:
    value = REGISTRY.get_sample_value(
        "modelserve_prediction_cache_hits_total", {"model": model, "version": "1"}
    )
    return value or 0.0


async def test_a_hit_never_reaches_the_worker_and_carries_the_callers_id() -> None:
    clock = FakeClock()
    cache = PredictionCache(
        backend=LocalBackend(max_entries=10, max_bytes=1 << 20, clock=clock),
        budget_cap_s=0.05,
        max_value_bytes=1 << 20,
    )
    worker = Worker()
    before = hits()
    first = await cache.infer(request(request_id="one"), CACHED, Call(), worker)
    await cache.flush()  # the answer is stored after it was returned
    second = await cache.infer(request(request_id="two"), CACHED, Call(), worker)
    assert worker.calls == 1 and hits() == before + 1
    assert (first.id, second.id) == ("one", "two")
    assert second.raw_output_contents == first.raw_output_contents
    await cache.infer(request(5.0), CACHED, Call(), worker)
    assert worker.calls == 2

    clock.now += 61  # the version's ttl_seconds is 60
    await cache.infer(request(request_id="three"), CACHED, Call(), worker)
    assert worker.calls == 3


async def test_the_local_backend_is_bounded_by_entries_and_bytes() -> None:
    backend = LocalBackend(max_entries=2, max_bytes=10)
    for key in ("a", "b", "c"):
        await backend.put(key, b"1234", 60, 0.05)
    assert len(backend) == 2 and await backend.get("a", 0.05) is None
    await backend.put("big", b"x" * 9, 60, 0.05)  # 4 + 9 > 10 bytes: "c" goes too
    assert await backend.get("c", 0.05) is None and await backend.get("big", 0.05) == b"x" * 9
    await backend.put("huge", b"x" * 11, 60, 0.05)  # larger than the whole cache: not kept
    assert await backend.get("huge", 0.05) is None


@pytest.fixture
async def redis_backend() -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(REDIS, key_prefix=f"modelserve:pc:unit-{uuid.uuid4().hex}:")
    try:
        yield backend
    finally:
        await backend.close()


async def test_redis_keeps_answers_for_every_router_with_the_versions_ttl(
    redis_backend: RedisBackend,
) -> None:
    await redis_backend.put("k", b"answer", 7, 0.05)
    assert await redis_backend.get("k", 0.05) == b"answer"
    ttl_ms = await redis_backend._client.pttl(redis_backend._prefix + "k")
    assert 0 < ttl_ms <= 7000
    # Another router (another client, same prefix) sees it.
    other = RedisBackend(REDIS, key_prefix=redis_backend._prefix)
    try:
        assert await other.get("k", 0.05) == b"answer"
    finally:
        await other.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_dead_redis_is_bypassed_counted_and_circuit_broken() -> None:
    backend = RedisBackend(
        f"redis://127.0.0.1:{closed_port()}/0", config=RedisClientConfig(breaker_open_s=60)
    )
    cache = PredictionCache(backend=backend, budget_cap_s=0.05, max_value_bytes=1 << 20)
    worker = Worker()

    def errors(reason: str) -> float:
        labels = {"backend": "redis", "operation": "get", "reason": reason}
        return REGISTRY.get_sample_value("modelserve_prediction_cache_errors_total", labels) or 0.0

    failed = errors("timeout") + errors("connection")
    open_before = errors("circuit_open")
    try:
        for _ in range(5):
            answer = await cache.infer(request(), CACHED, Call(), worker)
            np.testing.assert_array_equal(
                np.frombuffer(answer.raw_output_contents[0], np.float32), [2.0, 2.0]
            )
        assert worker.calls == 5  # every request was served, by the worker
        assert errors("timeout") + errors("connection") >= failed + 1
        assert backend.breaker.open  # 5 failures in a row (gets and puts)
        with pytest.raises(CacheError, match="circuit_open"):
            await backend.get("k", 0.05)
        await cache.infer(request(), CACHED, Call(), worker)
        assert errors("circuit_open") > open_before and worker.calls == 6
    finally:
        await cache.close()
