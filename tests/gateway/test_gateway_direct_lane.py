"""The gateway's direct lane (gateway/direct.py): which versions go straight to a worker, and
that a lane request falls back to the router path when no worker holds its version READY or
the catalog changes what the version needs."""

from __future__ import annotations

import socket

import pytest

from gateway.direct import DirectLane, NoWorkerLeft, needs_a_router
from modelserve.calls import Call
from modelserve.catalog.lookups import PLATFORM as LOOKUP_PLATFORM
from modelserve.catalog.replica import Catalog
from modelserve.catalog.version_stats import VersionStats
from modelserve.channels import Endpoint, internal_channel
from modelserve.deadlines import Deadline
from modelserve.discovery.static import StaticDiscovery
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import registry_pb2
from modelserve.workers import WorkerPool, WorkerState


def model(*versions: registry_pb2.ModelVersion, shadow: str = "") -> registry_pb2.Model:
    found = registry_pb2.Model(name="m", versions=list(versions), labels={"production": 1})
    if shadow:
        found.policy.policy.shadow.target = shadow
        found.policy.policy.shadow.fraction = 1.0
    return found


def version(number: int = 1, **config: object) -> registry_pb2.ModelVersion:
    return registry_pb2.ModelVersion(
        model="m", version=number, config=registry_pb2.ServingConfig(**config)
    )


def test_only_versions_without_router_work_go_direct() -> None:
    plain = version()
    assert not needs_a_router(model(plain), plain)
    cached = version(prediction_cache=registry_pb2.PredictionCache(enabled=True))
    assert needs_a_router(model(cached), cached)
    featured = version()
    featured.config.feature_inputs.add(model_input="f", view="v", features=["a"])
    assert needs_a_router(model(featured), featured)
    lookup = version()
    lookup.platform = LOOKUP_PLATFORM
    assert needs_a_router(model(lookup), lookup)
    assert needs_a_router(model(plain, version(2), shadow="2"), plain)  # mirrored at a router
    assert needs_a_router(None, plain)


def lane(catalog: Catalog, ready: set[tuple[str, int]]) -> tuple[DirectLane, WorkerPool]:
    pool = WorkerPool(StaticDiscovery({}))
    state = WorkerState(Endpoint("127.0.0.1:9", channel=None), serving=True, ready=ready)  # type: ignore[arg-type]
    pool.workers[state.endpoint.address] = state
    return DirectLane(catalog=catalog, pool=pool, stats=VersionStats()), pool


def decided(number: str) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="m", model_version=number)


def test_a_version_goes_direct_only_while_a_worker_holds_it_ready() -> None:
    catalog = Catalog(StaticDiscovery({}))
    catalog.apply(registry_pb2.WatchEvent(snapshot=True, models=[model(version())], revision=1))
    direct, pool = lane(catalog, {("m", 1)})
    assert direct.version_for(decided("1")) is not None
    assert direct.version_for(decided("2")) is None  # unknown here: the router says NOT_FOUND
    assert direct.version_for(decided("")) is None  # undecided requests never reach the lane
    next(iter(pool.workers.values())).ready = set()  # the worker let it go
    assert direct.version_for(decided("1")) is None  # the router's fallback rules apply


def test_a_catalog_change_is_seen_at_once() -> None:
    catalog = Catalog(StaticDiscovery({}))
    plain = version()
    catalog.apply(registry_pb2.WatchEvent(snapshot=True, models=[model(plain)], revision=1))
    direct, _ = lane(catalog, {("m", 1), ("m", 2)})
    assert direct.version_for(decided("1")) is not None
    mirrored = model(plain, version(2), shadow="2")
    catalog.apply(registry_pb2.WatchEvent(models=[mirrored], revision=2))
    assert direct.version_for(decided("1")) is None  # now shadowed: the router mirrors it


async def test_a_lane_whose_only_worker_is_gone_hands_the_request_to_a_router() -> None:
    """The gateway's view of the fleet can be thinner than a router's (a restarted worker's
    status stream to the gateway reconnects with backoff): when every worker the lane knows
    answers UNAVAILABLE and none is left, it raises NoWorkerLeft, not counted for canaries,
    so the data plane sends the request through a router (an e2e kill -9 lost the 4 requests
    in flight to this). A second worker that is still there is retried on as before."""
    catalog = Catalog(StaticDiscovery({}))
    catalog.apply(registry_pb2.WatchEvent(snapshot=True, models=[model(version())], revision=1))
    pool = WorkerPool(StaticDiscovery({}))
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: connection refused, UNAVAILABLE
    state = WorkerState(Endpoint(dead, channel=internal_channel(dead)), serving=True)
    state.ready = {("m", 1)}
    pool.workers[dead] = state
    stats = VersionStats()
    direct = DirectLane(catalog=catalog, pool=pool, stats=stats)
    found = direct.version_for(decided("1"))
    assert found is not None
    with pytest.raises(NoWorkerLeft):
        await direct.infer(decided("1"), found, Call(Deadline.after(2.0)))
    assert not stats.report("m").versions  # the router will count this call, not the lane
    await state.endpoint.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
