"""The direct lane: a decided request for a version that needs nothing of a router goes
straight to a worker that holds it READY, one hop instead of two.

A router does per-version work: feature enrichment, the prediction cache, shadow mirroring,
lookups, composites, and the fallback when no worker holds a version. A version with none of
that (no ``feature_inputs``, no prediction cache, not a lookup, its model without a shadow)
gains nothing from the router hop but its cost: ~60-70 us of CPU per request and a network
round trip (issue 14, bench/reference.py). For those versions the gateway keeps the workers'
status streams (``modelserve.workers.WorkerPool``, as a router does) and sends to a worker
itself with the router's rules (``Hop``: power of two choices over the READY workers, a retry
elsewhere on UNAVAILABLE, the deadline less the hop margin).

Everything else still goes through a router, and so does a lane request when no worker holds
its version READY (the router answers with the policy's fallback or the precise UNAVAILABLE),
or when every worker the gateway knows for it answered UNAVAILABLE (``NoWorkerLeft``: a router
may know more, e.g. a restarted worker whose status stream to this gateway is still
reconnecting).
Canary statistics stay complete: the calls served here are counted per version in the
gateway's ``VersionStats``, which the canary reader adds to the routers' (no call is counted
twice: a call goes one way or the other). The router stays the home of per-version work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc

from gateway.stream_lane import StreamLanes
from modelserve.calls import Call
from modelserve.catalog.lookups import is_lookup
from modelserve.catalog.replica import Catalog
from modelserve.catalog.version_stats import VersionStats, status_of
from modelserve.channels import Endpoint
from modelserve.errors import UnavailableError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2
from modelserve.workers import WorkerPool, worker_hop


def needs_a_router(model: registry_pb2.Model | None, version: registry_pb2.ModelVersion) -> bool:
    """Whether serving ``version`` takes per-version work only a router does."""
    if model is None or is_lookup(version):
        return True
    config = version.config
    if config.feature_inputs or config.prediction_cache.enabled:
        return True
    if model.HasField("policy"):
        policy = model.policy.policy
        if policy.HasField("shadow") and policy.shadow.target:
            return True
    return False


class NoWorkerLeft(UnavailableError):
    """Every worker the direct lane knows for a version answered UNAVAILABLE, none left."""


class DirectLane:
    def __init__(
        self,
        *,
        catalog: Catalog,
        pool: WorkerPool,
        stats: VersionStats,
        retry_attempts: int = 1,
        default_timeout: float = 30.0,
        streams: StreamLanes | None = None,
    ) -> None:
        self._catalog = catalog
        # Calls as messages of a stream per worker (gateway/stream_lane.py), or unary RPCs.
        self._send_for = streams.sender if streams is not None else _model_infer
        self._pool = pool
        self._stats = stats
        self._hop = worker_hop(retry_attempts, default_timeout)  # the router's rules (T34)
        # (model, version as the request names it) -> the version when it may go direct,
        # None when it needs a router; rebuilt after any catalog change (policies, versions).
        self._eligible: dict[tuple[str, str], registry_pb2.ModelVersion | None] = {}
        catalog.on_change(lambda _changed: self._eligible.clear())

    def version_for(self, request: pb.ModelInferRequest) -> registry_pb2.ModelVersion | None:
        """The version ``request`` (decided: its model_version is a number) may be sent
        straight to a worker for, or None (a router serves it)."""
        key = (request.model_name, request.model_version)
        try:
            version = self._eligible[key]
        except KeyError:
            version = self._eligible[key] = self._look_up(*key)
        if version is None or not self._pool.candidates(version.model, version.version):
            return None
        return version

    def _look_up(self, model_name: str, number: str) -> registry_pb2.ModelVersion | None:
        if len(self._eligible) > 4096:  # bounded: versions come and go
            self._eligible.clear()
        if not (number.isascii() and number.isdigit()):
            return None
        version = self._catalog.versions_of(model_name).get(int(number))
        if version is None or needs_a_router(self._catalog.models.get(model_name), version):
            return None
        return version

    async def infer(
        self, request: pb.ModelInferRequest, version: registry_pb2.ModelVersion, call: Call
    ) -> pb.ModelInferResponse:
        """One call to a worker holding ``version`` READY, counted for canary gates as a
        router counts its calls (every outcome but CANCELLED).

        Raises ``NoWorkerLeft`` (counted nowhere) when the workers this gateway knows all
        answered UNAVAILABLE and none is left to try: the caller sends the request through a
        router then, whose view of the fleet may be wider (a worker whose status stream to
        this gateway has not reconnected yet after a restart) and whose fallback rules apply.
        """
        model, number = version.model, version.version
        started = time.perf_counter()
        none_left = [False]

        def choose(tried: set[str]) -> Endpoint | None:
            chosen = self._pool.choose(model, number, tried)
            if chosen is None and tried:
                none_left[0] = True
            return chosen

        try:
            answer: pb.ModelInferResponse = await self._hop.unary(
                choose,
                self._send_for,
                request,
                call,
                none_left=f"no serving worker holds model '{model}' version {number} yet",
            )
        except UnavailableError as exc:
            if none_left[0]:
                raise NoWorkerLeft(exc.message) from exc
            self._stats.record(model, number, 0.0, status_of(exc))
            raise
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            code = grpc.StatusCode.CANCELLED if cancelled else status_of(exc)
            self._stats.record(model, number, 0.0, code)
            raise
        self._stats.record(model, number, time.perf_counter() - started, None)
        return answer


def _model_infer(endpoint: Endpoint) -> Callable[..., Awaitable[pb.ModelInferResponse]]:
    stub: pb_grpc.GRPCInferenceServiceStub = endpoint.hot_stub(pb_grpc.GRPCInferenceServiceStub)
    return stub.ModelInfer
