"""Shadow traffic in the router: output comparison, the latency reservoir, sampling, and the
router's ModelInfer against a fake worker whose shadow version answers differently, fails or
hangs, while the caller always gets the primary's answer and status."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from grpc import aio
from testsupport import eventually

from modelserve.calls import Call
from modelserve.catalog.replica import Catalog
from modelserve.channels import Endpoint, EndpointSet
from modelserve.cli.shadow_report import quantile, render, summarise
from modelserve.deadlines import Deadline
from modelserve.discovery.static import StaticDiscovery
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import common_pb2, registry_pb2
from modelserve.tensors import decode_inputs, decode_outputs, encode_inputs, encode_outputs
from modelserve.workers import WorkerPool, WorkerState
from router.cache_backends import LocalBackend
from router.dataplane import RouterDataPlane
from router.enrichment import Enricher
from router.feature_cache import FeatureCache
from router.features import FeatureClient
from router.forwarding import Forwarder
from router.lookup import LookupAnswerer
from router.prediction_cache import PredictionCache
from router.shadow import ShadowMirror
from router.shadow_stats import Reservoir, compare_outputs

# ---- comparison, reservoir, quantiles ---------------------------------------------------------


def answer(**outputs: np.ndarray) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="m")
    encode_outputs(response, outputs)
    return response


def test_outputs_agree_within_the_tolerance_and_not_beyond() -> None:
    a = answer(p=np.array([[0.5], [0.25]], np.float32))
    close = answer(p=np.array([[0.5], [0.2500001]], np.float32))
    far = answer(p=np.array([[0.5], [0.3]], np.float32))
    assert compare_outputs(a, a, 0.0).agree
    near = compare_outputs(a, close, 1e-6)
    assert near.agree and near.max_abs_diff is not None and 0 < near.max_abs_diff <= 1e-6
    apart = compare_outputs(a, far, 1e-6)
    assert not apart.agree and apart.max_abs_diff == pytest.approx(0.05, rel=1e-5)


def test_shape_datatype_or_names_that_differ_disagree() -> None:
    a = answer(p=np.zeros((2, 1), np.float32))
    assert not compare_outputs(a, answer(p=np.zeros((1, 2), np.float32)), 1.0).agree
    assert not compare_outputs(a, answer(p=np.zeros((2, 1), np.float64)), 1.0).agree
    assert not compare_outputs(a, answer(q=np.zeros((2, 1), np.float32)), 1.0).agree
    nan = answer(p=np.array([[np.nan], [0.0]], np.float32))
    assert compare_outputs(nan, nan, 0.0).agree  # NaN where the primary has NaN too
    assert not compare_outputs(a, nan, 1e9).agree  # NaN against a number: infinitely far
    words = answer(w=np.array([[b"a"], [b"b"]], object))
    assert compare_outputs(words, words, 0.0).agree
    assert not compare_outputs(words, answer(w=np.array([[b"a"], [b"c"]], object)), 1.0).agree


def test_the_reservoir_is_bounded_and_samples_uniformly() -> None:
    reservoir = Reservoir(size=100, rng=random.Random(7))
    for value in range(10_000):
        reservoir.add(float(value))
    assert len(reservoir.values) == 100 and reservoir.seen == 10_000
    # A uniform sample of 0..9999: its median is near 5000 (sd of the sample median ~ 500).
    assert 3000 < float(np.median(reservoir.values)) < 7000


def test_quantiles_merge_routers_by_the_pairs_each_sample_stands_for() -> None:
    # Router A saw 900 pairs at 1 ms (kept 9 samples), router B 100 pairs at 10 ms (kept 10).
    samples = [([0.001] * 9, 100.0), ([0.010] * 10, 10.0)]
    assert quantile(samples, 0.5) == 0.001
    assert quantile(samples, 0.95) == 0.010
    assert quantile([], 0.5) is None


# ---- the router's ModelInfer with a fake worker -----------------------------------------------


class FakeWorker(pb_grpc.GRPCInferenceServiceServicer):
    """Version 1 answers 2x; version 2 (the shadow) answers 2x + ``offset``, fails, or hangs
    until released, as ``mode`` says."""

    def __init__(self) -> None:
        self.mode = "answer"
        self.offset = 0.0
        self.versions: list[str] = []
        self.release = asyncio.Event()
        self.channels: list[aio.Channel] = []  # the routers' channels to it, closed at the end

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        self.versions.append(request.model_version)
        shadow = request.model_version == "2"
        if shadow and self.mode == "fail":
            await context.abort(grpc.StatusCode.INTERNAL, "the shadow model broke")
        if shadow and self.mode == "hang":
            await self.release.wait()
        x = decode_inputs(request)["x"]
        response = pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        )
        encode_outputs(response, {"score": x * 2 + (self.offset if shadow else 0.0)})
        return response


def model(shadow: registry_pb2.Shadow | None) -> registry_pb2.Model:
    spec = common_pb2.TensorSpec(name="x", datatype="FP32", shape=[-1, 1])
    out = common_pb2.TensorSpec(name="score", datatype="FP32", shape=[-1, 1])
    versions = [
        registry_pb2.ModelVersion(
            model="scorer",
            version=n,
            inputs=[spec],
            outputs=[out],
            config=registry_pb2.ServingConfig(max_batch_size=8),
        )
        for n in (1, 2)
    ]
    found = registry_pb2.Model(name="scorer", versions=versions, labels={"production": 1})
    if shadow is not None:
        found.policy.CopyFrom(
            registry_pb2.PolicyRevision(
                model="scorer", revision=1, policy=registry_pb2.RoutingPolicy(shadow=shadow)
            )
        )
    return found


@dataclass
class Router:
    plane: RouterDataPlane
    mirror: ShadowMirror
    worker: FakeWorker

    async def infer(self, x: float) -> pb.ModelInferResponse:
        request = pb.ModelInferRequest(model_name="scorer")
        encode_inputs(request, {"x": np.array([[x]], np.float32)})
        return await self.plane.infer(request, Call(Deadline.after(2.0)))


async def make_router(
    worker: FakeWorker,
    address: str,
    shadow: registry_pb2.Shadow | None,
    *,
    min_timeout_s: float = 0.05,
    max_in_flight: int = 64,
) -> Router:
    catalog = Catalog(StaticDiscovery({}))
    catalog.apply(registry_pb2.WatchEvent(snapshot=True, models=[model(shadow)], revision=1))
    pool = WorkerPool(StaticDiscovery({}))
    endpoint = Endpoint(address, aio.insecure_channel(address))
    worker.channels.append(endpoint.channel)
    pool.workers[address] = WorkerState(
        endpoint=endpoint, serving=True, ready={("scorer", 1), ("scorer", 2)}
    )
    forwarder = Forwarder(pool=pool, retry_attempts=1, default_timeout=2.0)
    enricher = Enricher(
        features=FeatureClient(
            endpoints=EndpointSet(), cache=FeatureCache(ttl_s=1, max_entries=10), budget_cap_s=0.05
        )
    )
    mirror = ShadowMirror(
        catalog=catalog,
        infer=forwarder.infer,
        enrich=enricher.enrich,
        min_timeout_s=min_timeout_s,
        max_timeout_s=max(min_timeout_s, 1.0),
        max_in_flight=max_in_flight,
        rng=random.Random(3),
    )
    plane = RouterDataPlane(
        catalog=catalog,
        pool=pool,
        forwarder=forwarder,
        enricher=enricher,
        predictions=PredictionCache(
            backend=LocalBackend(max_entries=10, max_bytes=1 << 20),
            budget_cap_s=0.05,
            max_value_bytes=1 << 20,
        ),
        lookups=LookupAnswerer(endpoints=EndpointSet()),
        shadow=mirror,
    )
    return Router(plane, mirror, worker)


@pytest.fixture
async def worker_address() -> AsyncIterator[tuple[FakeWorker, str]]:
    worker = FakeWorker()
    server = aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(worker, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield worker, f"127.0.0.1:{port}"
    worker.release.set()
    for channel in worker.channels:
        await channel.close()
    await server.stop(0)


def score(response: pb.ModelInferResponse) -> list[list[float]]:
    return decode_outputs(response)["score"].tolist()  # type: ignore[no-any-return]


async def test_shadow_pairs_record_agreement_and_latency(
    worker_address: tuple[FakeWorker, str],
) -> None:
    worker, address = worker_address
    worker.offset = 0.5
    router = await make_router(worker, address, registry_pb2.Shadow(target="2", fraction=1.0))
    for x in range(5):
        response = await router.infer(float(x))
        assert response.model_version == "1" and score(response) == [[2.0 * x]]

    async def recorded() -> None:
        pairs = router.mirror.stats.report("scorer").pairs
        assert len(pairs) == 1 and pairs[0].pairs == 5

    await eventually(recorded, timeout=5)
    (pair,) = router.mirror.stats.report("scorer").pairs
    assert (pair.primary_version, pair.shadow_version) == (1, 2)
    assert pair.agreements == 0 and pair.max_abs_diff == pytest.approx(0.5)
    assert len(pair.primary_latency_samples_s) == len(pair.shadow_latency_samples_s) == 5
    assert worker.versions.count("2") == 5
    lines = render("scorer", *summarise([router.mirror.stats.report("scorer")]))
    assert "5 pairs, agreement 0.00%" in lines[0] and "delta" in lines[1]


async def test_the_fraction_samples_calls(worker_address: tuple[FakeWorker, str]) -> None:
    worker, address = worker_address
    router = await make_router(worker, address, registry_pb2.Shadow(target="2", fraction=0.25))
    for _ in range(200):
        await router.infer(1.0)
    await eventually(lambda: _idle(router), timeout=5)
    mirrored = worker.versions.count("2")
    assert 25 <= mirrored <= 75  # 50 expected; a seeded generator, so this never flakes


async def _idle(router: Router) -> None:
    assert router.mirror.in_flight == 0


@pytest.mark.parametrize("mode", ["fail", "hang"])
async def test_a_failing_or_hanging_shadow_never_reaches_the_caller(
    worker_address: tuple[FakeWorker, str], mode: str
) -> None:
    worker, address = worker_address
    worker.mode = mode
    # A failing shadow gets a deadline long enough that a loaded machine cannot turn its
    # error into a timeout; a hanging one keeps the short default.
    extra = {"min_timeout_s": 5.0} if mode == "fail" else {}
    router = await make_router(
        worker, address, registry_pb2.Shadow(target="2", fraction=1.0), **extra
    )
    for x in range(4):
        response = await router.infer(float(x))
        assert response.model_version == "1" and score(response) == [[2.0 * x]]

    async def counted() -> None:
        (pair,) = router.mirror.stats.report("scorer").pairs
        assert pair.pairs == 0
        assert (pair.shadow_timeouts if mode == "hang" else pair.shadow_errors) == 4

    await eventually(counted, timeout=5)


async def test_the_caller_does_not_wait_for_the_shadow_and_excess_is_dropped(
    worker_address: tuple[FakeWorker, str],
) -> None:
    worker, address = worker_address
    worker.mode = "hang"
    shadow = registry_pb2.Shadow(target="2", fraction=1.0)
    # A long shadow deadline: the shadow calls are still hanging when the callers are answered.
    router = await make_router(worker, address, shadow, min_timeout_s=30.0, max_in_flight=2)
    for x in range(5):
        assert score(await router.infer(float(x))) == [[2.0 * x]]
    assert router.mirror.in_flight == 2  # the bound
    assert router.mirror.stats.dropped == 3
    worker.release.set()
    await eventually(lambda: _idle(router), timeout=5)
    await router.mirror.close()


async def test_no_mirroring_to_the_primary_itself(worker_address: tuple[FakeWorker, str]) -> None:
    worker, address = worker_address
    router = await make_router(worker, address, registry_pb2.Shadow(target="1", fraction=1.0))
    await router.infer(1.0)
    assert router.mirror.in_flight == 0 and worker.versions == ["1"]
    assert not router.mirror.stats.report("scorer").pairs
