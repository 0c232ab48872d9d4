"""A policy's share whose version no serving worker holds READY falls back to the policy's
fallback version (the version served before the policy), at the router, counted as a failure
of the version that could not serve (canary gates see it) and in
``modelserve_router_fallbacks_total``. A caller who named the version gets that version or an
error, never another one. Real router data plane, real gRPC worker stand-in (FakeWorker)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from test_router_shadow import FakeWorker, Router, make_router, worker_address  # noqa: F401

from modelserve.calls import FALLBACK_METADATA, Call
from modelserve.deadlines import Deadline
from modelserve.errors import UnavailableError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import registry_pb2
from modelserve.tensors import encode_inputs
from router.fallbacks import FALLBACKS


async def router_with_split(worker: FakeWorker, address: str, fallback: int) -> Router:
    router = await make_router(worker, address, None)
    catalog = router.plane.catalog
    found = registry_pb2.Model()
    found.CopyFrom(catalog.models["scorer"])
    split = [registry_pb2.SplitTarget(version=v, percent=50) for v in (1, 2)]
    found.policy.CopyFrom(
        registry_pb2.PolicyRevision(
            model="scorer",
            revision=1,
            policy=registry_pb2.RoutingPolicy(split=split, fallback_version=fallback),
        )
    )
    catalog.apply(registry_pb2.WatchEvent(models=[found], revision=2))
    return router


def request(version: str = "") -> pb.ModelInferRequest:
    built = pb.ModelInferRequest(model_name="scorer", model_version=version)
    encode_inputs(built, {"x": np.array([[1.0]], np.float32)})
    return built


def fallbacks() -> float:
    return float(FALLBACKS.labels("scorer", "2", "1")._value.get())


async def test_a_share_without_ready_workers_is_served_by_the_fallback(
    worker_address: tuple[FakeWorker, str],  # noqa: F811
) -> None:
    worker, address = worker_address
    router = await router_with_split(worker, address, fallback=1)
    (state,) = router.plane._pool.workers.values()
    state.ready = {("scorer", 1)}  # every worker holding v2 went away
    before = fallbacks()
    answers = [await router.plane.infer(request(), Call(Deadline.after(2.0))) for _ in range(40)]
    assert {a.model_version for a in answers} == {"1"}
    assert set(worker.versions) == {"1"}
    fell_back = fallbacks() - before
    assert 5 < fell_back < 40  # about half of the split went to v2 and fell back
    (v2,) = [v for v in router.plane.version_stats.report("scorer").versions if v.version == 2]
    assert v2.errors == v2.requests == fell_back  # v2 failed its share: the canary sees it


async def test_a_gateway_decision_carries_the_fallback(
    worker_address: tuple[FakeWorker, str],  # noqa: F811
) -> None:
    worker, address = worker_address
    router = await router_with_split(worker, address, fallback=1)
    (state,) = router.plane._pool.workers.values()
    state.ready = {("scorer", 1)}
    decided = Call(Deadline.after(2.0), ((FALLBACK_METADATA, "1"),))
    answer = await router.plane.infer(request("2"), decided)  # the gateway chose v2
    assert answer.model_version == "1"


async def test_a_named_version_never_falls_back(
    worker_address: tuple[FakeWorker, str],  # noqa: F811
) -> None:
    worker, address = worker_address
    router = await router_with_split(worker, address, fallback=1)
    (state,) = router.plane._pool.workers.values()
    state.ready = {("scorer", 1)}
    with pytest.raises(UnavailableError, match="version 2"):
        await router.plane.infer(request("2"), Call(Deadline.after(2.0)))
    assert worker.versions == []


async def test_no_fallback_when_the_fallback_is_not_ready_either(
    worker_address: tuple[FakeWorker, str],  # noqa: F811
) -> None:
    worker, address = worker_address
    router = await router_with_split(worker, address, fallback=1)
    (state,) = router.plane._pool.workers.values()
    state.ready = set()
    with pytest.raises(UnavailableError) as caught:
        for _ in range(10):
            await router.plane.infer(request(), Call(Deadline.after(2.0)))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
