"""The router's request path: the work that depends on the chosen version.

ModelInfer here: take the version decided upstream (``Catalog.decide``: a request from the
gateway names its version; a V2 client calling the router directly is routed here, once, and
the decision written into the request), then, for that version: lookups of precomputed
predictions (no worker), enrichment with online features, the prediction cache, and the
forwarder to a worker that holds the version READY (``Forwarder``). Per-version counters feed
canary gates; shadow mirroring starts only once the caller's answer exists. Composites run in
``CompositeExecutor``, whose member calls take the same forwarder.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from modelserve.calls import Call, fan_out
from modelserve.catalog.composite_replica import CompositeCatalog
from modelserve.catalog.lookups import is_lookup
from modelserve.catalog.replica import Catalog
from modelserve.catalog.routing import carry_decision
from modelserve.catalog.version_stats import VersionStats, status_of
from modelserve.errors import UnavailableError, UnimplementedError, from_rpc_error
from modelserve.metrics import ModelMetrics
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import composite_pb2, registry_pb2
from modelserve.v2 import metadata, repository
from modelserve.v2.statistics import merge_statistics
from modelserve.workers import WorkerPool
from router.composite_executor import CompositeExecutor
from router.enrichment import Enricher
from router.fallbacks import note_fallback
from router.forwarding import Forwarder
from router.lookup import LookupAnswerer
from router.prediction_cache import PredictionCache
from router.shadow import ShadowMirror

STATISTICS_TIMEOUT_S = 2.0


class RouterDataPlane:
    server_name = "modelserve-router"
    extensions = ("statistics",)
    caller_view = True
    edge = None

    def __init__(
        self,
        *,
        catalog: Catalog,
        pool: WorkerPool,
        forwarder: Forwarder,
        enricher: Enricher,
        predictions: PredictionCache,
        lookups: LookupAnswerer,
        composites: CompositeCatalog | None = None,
        executor: CompositeExecutor | None = None,
        shadow: ShadowMirror | None = None,
        version_stats: VersionStats | None = None,
    ) -> None:
        self.catalog = catalog
        self.composites = composites
        self._pool = pool
        self._forwarder = forwarder
        self._enricher = enricher
        self._predictions = predictions
        self._lookups = lookups
        self._executor = executor
        self._shadow = shadow
        self.version_stats = version_stats or VersionStats()
        self._model_metrics = ModelMetrics("router")

    async def infer(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse:
        by_policy = not request.model_version and "label" not in request.parameters
        version = self.catalog.decide(request, call.forwarded, inner=True)
        carry_decision(request, version)  # a no-op for a request the gateway decided
        if is_lookup(version):  # precomputed predictions: no worker
            return await self._lookups.infer(request, version, call)
        if not self._pool.candidates(version.model, version.version):
            version = self._fall_back(request, version, call, by_policy)
        started = self._model_metrics.start(version.model, version.version)
        caller = request
        try:
            answer, request = await self._run(request, version, call)
        except BaseException as exc:  # every failure but CANCELLED counts against the version
            cancelled = isinstance(exc, asyncio.CancelledError)
            code = grpc.StatusCode.CANCELLED if cancelled else status_of(exc)
            self.version_stats.record(version.model, version.version, 0.0, code)
            self._model_metrics.end(version.model, version.version, started, code.name)
            raise
        elapsed = time.perf_counter() - started
        self.version_stats.record(version.model, version.version, elapsed, None)
        self._model_metrics.end(version.model, version.version, started, "OK")
        if self._shadow is not None:  # only once the answer exists, and it returns at once
            self._shadow.after(caller, request, version, answer, elapsed, call.forwarded)
        return answer

    def _fall_back(
        self,
        request: pb.ModelInferRequest,
        version: registry_pb2.ModelVersion,
        call: Call,
        by_policy: bool,
    ) -> registry_pb2.ModelVersion:
        """The version to serve a policy-routed request whose version no worker holds READY:
        the policy's fallback when a worker holds that (counted as a failure of the version
        that could not serve, so a canary sees it, and logged); else ``version`` itself, whose
        forwarding then answers UNAVAILABLE."""
        fallback = call.fallback()
        if not fallback and by_policy:  # decided here, by the policy
            fallback = self.catalog.policy_fallback(version.model)
        if not fallback or fallback == version.version:
            return version
        if not self._pool.candidates(version.model, fallback):
            return version
        found = self.catalog.versions_of(version.model).get(fallback)
        if found is None:
            return version
        self.version_stats.record(version.model, version.version, 0.0, grpc.StatusCode.UNAVAILABLE)
        note_fallback(version.model, version.version, fallback)
        carry_decision(request, found)
        return found

    async def _run(
        self, request: pb.ModelInferRequest, version: registry_pb2.ModelVersion, call: Call
    ) -> tuple[pb.ModelInferResponse, pb.ModelInferRequest]:
        """The answer, and the request the model ran on (enriched, maybe)."""
        config = version.config
        if config.feature_inputs:
            request = await self._enricher.enrich(request, version, call)
        if config.prediction_cache.enabled:
            # Keyed on the enriched input: the same caller input may meet new features.
            answer = await self._predictions.infer(request, version, call, self._forwarder.infer)
        else:
            answer = await self._forwarder.infer(request, version, call)
        return answer, request

    async def infer_composite(
        self, request: pb.ModelInferRequest, composite: composite_pb2.Composite, call: Call
    ) -> pb.ModelInferResponse:
        assert self._executor is not None
        return await self._executor.infer(request, composite, call)

    async def server_ready(self, call: Call) -> bool:
        return bool(self._pool.serving())

    def _version_ready(self, version: registry_pb2.ModelVersion) -> bool:
        if is_lookup(version):
            return self._lookups.ready()
        return bool(self._pool.candidates(version.model, version.version))

    async def model_ready(
        self, request: pb.ModelReadyRequest, version: registry_pb2.ModelVersion, call: Call
    ) -> bool:
        return self._version_ready(version)

    async def composite_ready(
        self, request: pb.ModelReadyRequest, composite: composite_pb2.Composite, call: Call
    ) -> bool:
        assert self._executor is not None
        return self._executor.ready(composite.name, self._version_ready)

    async def repository_load(self, request: pb.RepositoryModelLoadRequest, call: Call) -> None:
        raise UnimplementedError(repository.ON_THE_GATEWAY)

    async def repository_unload(self, request: pb.RepositoryModelUnloadRequest, call: Call) -> None:
        raise UnimplementedError(repository.ON_THE_GATEWAY)

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, call: Call
    ) -> pb.RepositoryIndexResponse:
        ready = self._pool.ready_versions()
        index = metadata.repository_index(
            self.catalog.models.values(),
            ready | self._lookups.ready_versions(self.catalog),
            self._pool.failed_versions(),
        )
        if self._executor is not None:
            self._executor.add_to_index(index, lambda v: (v.model, v.version) in ready)
        if request.ready:
            kept = [m for m in index.models if m.state == "READY"]
            del index.models[:]
            index.models.extend(kept)
        return index

    async def statistics(
        self,
        request: pb.ModelStatisticsRequest,
        version: registry_pb2.ModelVersion | None,
        call: Call,
    ) -> pb.ModelStatisticsResponse:
        """Every serving worker's statistics, summed."""
        if version is not None:
            request = pb.ModelStatisticsRequest(name=version.model, version=str(version.version))
        workers = self._pool.serving()
        if not workers:
            raise UnavailableError("no serving worker to ask for statistics")
        results = await fan_out(
            [w.endpoint for w in workers],
            lambda e: e.hot_stub(pb_grpc.GRPCInferenceServiceStub).ModelStatistics,
            request,
            call,
            default_timeout=STATISTICS_TIMEOUT_S,
        )
        answers = [r for r in results if isinstance(r, pb.ModelStatisticsResponse)]
        if not answers:
            error = next(r for r in results if isinstance(r, BaseException))
            if isinstance(error, grpc.RpcError):
                raise from_rpc_error(error, "worker")
            raise error
        return merge_statistics(answers)
