"""The router's V2 endpoint: a V2 client (or the gateway) can call it directly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
from grpc import aio

from modelserve.catalog.lookups import is_lookup
from modelserve.catalog.replica import Catalog
from modelserve.catalog.routing import label_of, routing_key_of
from modelserve.channels import outbound_timeout
from modelserve.errors import UnavailableError, from_rpc_error
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tracing import outbound_metadata
from modelserve.v2 import metadata as v2_metadata
from modelserve.v2.streaming import stream_infer
from router.composite_executor import CompositeExecutor
from router.enrichment import Enricher
from router.forwarding import Forwarder
from router.lookup import LookupAnswerer
from router.prediction_cache import PredictionCache
from router.shadow import ShadowMirror
from router.statistics import merge_statistics
from router.version_stats import VersionStats, status_of
from router.workers import WorkerPool


class RouterInferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        *,
        catalog: Catalog,
        pool: WorkerPool,
        forwarder: Forwarder,
        enricher: Enricher,
        predictions: PredictionCache,
        lookups: LookupAnswerer,
        composites: CompositeExecutor | None = None,
        shadow: ShadowMirror | None = None,
        version_stats: VersionStats | None = None,
    ) -> None:
        self._version_stats = version_stats or VersionStats()
        self._lookups = lookups
        self._catalog = catalog
        self._pool = pool
        self._forwarder = forwarder
        self._enricher = enricher
        self._predictions = predictions
        self._composites = composites
        self._shadow = shadow

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(
            ready=self._catalog.synced.is_set() and bool(self._pool.serving())
        )

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="modelserve-router", version="0.1.0", extensions=["statistics"]
        )

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        if self._composites and self._composites.handles(request.name):
            return pb.ModelReadyResponse(
                ready=self._composites.ready(
                    request.name,
                    lambda v: (
                        self._lookups.ready()
                        if is_lookup(v)
                        else bool(self._pool.candidates(v.model, v.version))
                    ),
                )
            )
        version = self._catalog.resolve(request.name, request.version)
        if is_lookup(version):
            return pb.ModelReadyResponse(ready=self._lookups.ready())
        return pb.ModelReadyResponse(
            ready=bool(self._pool.candidates(version.model, version.version))
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        if self._composites and self._composites.handles(request.name):
            return self._composites.catalog.model_metadata(request.name, request.version)
        model = self._catalog.get_model(request.name)
        return v2_metadata.model_metadata(
            model, self._catalog.resolve(request.name, request.version), caller_view=True
        )

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        if self._composites and self._composites.handles(request.name):
            return self._composites.catalog.model_config(request.name, request.version)
        return v2_metadata.model_config(
            self._catalog.resolve(request.name, request.version), caller_view=True
        )

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        index = v2_metadata.repository_index(
            self._catalog.models.values(),
            self._pool.ready_versions() | self._lookups.ready_versions(self._catalog),
        )
        if self._composites:
            ready = self._pool.ready_versions()
            self._composites.add_to_index(index, lambda v: (v.model, v.version) in ready)
        if request.ready:
            kept = [m for m in index.models if m.state == "READY"]
            del index.models[:]
            index.models.extend(kept)
        return index

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        if self._composites and self._composites.handles(request.model_name):
            return await self._composites.infer(request, context)
        version = self._catalog.route(
            request.model_name,
            request.model_version,
            label_of(request),
            routing_key_of(request, context.invocation_metadata()),
        )
        if is_lookup(version):  # precomputed predictions: no worker
            return await self._lookups.infer(request, version, context)
        started = time.perf_counter()
        caller = request
        config = version.config
        try:
            if config.feature_inputs:
                request = await self._enricher.enrich(request, version, context)
            if config.prediction_cache.enabled:
                # Keyed on the enriched input: the same caller input may meet new features.
                answer = await self._predictions.infer(
                    request, version, context, self._forwarder.infer
                )
            else:
                answer = await self._forwarder.infer(request, version, context)
        except BaseException as exc:  # counted per version for canary gates, then re-raised
            cancelled = isinstance(exc, asyncio.CancelledError)
            code = grpc.StatusCode.CANCELLED if cancelled else status_of(exc)
            self._version_stats.record(version.model, version.version, 0.0, code)
            raise
        elapsed = time.perf_counter() - started
        self._version_stats.record(version.model, version.version, elapsed, None)
        if self._shadow is not None:  # only once the answer exists, and it returns at once
            self._shadow.after(caller, request, version, answer, elapsed)
        return answer

    def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        return stream_infer(request_iterator, context, self.ModelInfer)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            version = self._catalog.resolve(request.name, request.version)
            request = pb.ModelStatisticsRequest(name=version.model, version=str(version.version))
        workers = self._pool.serving()
        if not workers:
            raise UnavailableError("no serving worker to ask for statistics")
        timeout = outbound_timeout(context, 2.0)
        calls = [
            w.endpoint.stub(pb_grpc.GRPCInferenceServiceStub).ModelStatistics(
                request, timeout=timeout, metadata=outbound_metadata()
            )
            for w in workers
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        answers = [r for r in results if isinstance(r, pb.ModelStatisticsResponse)]
        if not answers:
            error = next(r for r in results if isinstance(r, BaseException))
            if isinstance(error, grpc.RpcError):
                raise from_rpc_error(error, "worker")
            raise error
        return merge_statistics(answers)
