"""RouterControl: how the router would route and what its shadow traffic recorded, for the
CLI and for debugging."""

from __future__ import annotations

import time

from grpc import aio

from modelserve.catalog.replica import DEFAULT_LABEL, Catalog
from modelserve.catalog.version_stats import VersionStats
from modelserve.errors import InvalidArgumentError
from modelserve.proto.modelserve.v1 import router_pb2, router_pb2_grpc
from modelserve.workers import WorkerPool
from router.shadow_samples import ShadowSamples
from router.shadow_stats import ShadowStats


class RouterControlServicer(router_pb2_grpc.RouterControlServicer):
    def __init__(
        self,
        *,
        catalog: Catalog,
        pool: WorkerPool,
        shadow: ShadowStats | None = None,
        versions: VersionStats | None = None,
        samples: ShadowSamples | None = None,
    ) -> None:
        self._versions = versions or VersionStats()
        self._catalog = catalog
        self._pool = pool
        self._shadow = shadow or ShadowStats()
        self._samples = samples or ShadowSamples()

    async def Resolve(
        self, request: router_pb2.ResolveRequest, context: aio.ServicerContext
    ) -> router_pb2.ResolveResponse:
        version = self._catalog.resolve(request.model, request.version, request.label)
        model = self._catalog.get_model(request.model)
        if request.version.isascii() and request.version.isdigit():
            reason = "version"
        elif request.label or request.version:
            reason = f"label:{request.label or request.version}"
        elif model.policy.policy.split or model.policy.policy.target_label:
            reason = f"policy:revision {model.policy.revision}"
        elif DEFAULT_LABEL in model.labels:
            reason = f"label:{DEFAULT_LABEL}"
        else:
            reason = "newest"
        return router_pb2.ResolveResponse(
            model=version.model,
            version=version.version,
            reason=reason,
            workers=[e.address for e in self._pool.candidates(version.model, version.version)],
        )

    async def ListWorkers(
        self, request: router_pb2.ListWorkersRequest, context: aio.ServicerContext
    ) -> router_pb2.ListWorkersResponse:
        now = time.monotonic()
        return router_pb2.ListWorkersResponse(
            workers=[
                router_pb2.WorkerInfo(
                    address=address,
                    worker_id=w.worker_id,
                    serving=w.serving,
                    ready_versions=sorted(f"{m}:{v}" for m, v in w.ready),
                    outstanding=w.endpoint.outstanding,
                    ejected=w.endpoint.ejected(now),
                    versions=w.versions,
                )
                for address, w in sorted(self._pool.workers.items())
            ]
        )

    async def ShadowReport(
        self, request: router_pb2.ShadowReportRequest, context: aio.ServicerContext
    ) -> router_pb2.ShadowReportResponse:
        # A model this router never heard of is NOT_FOUND (DESIGN's pitfall: never UNKNOWN);
        # a known model without shadow traffic is an empty report.
        self._catalog.get_model(request.model)
        return self._shadow.report(request.model)

    async def VersionStats(
        self, request: router_pb2.VersionStatsRequest, context: aio.ServicerContext
    ) -> router_pb2.VersionStatsResponse:
        self._catalog.get_model(request.model)  # unknown model: NOT_FOUND, as ShadowReport
        return self._versions.report(request.model)

    async def ShadowDisagreements(
        self, request: router_pb2.ShadowDisagreementsRequest, context: aio.ServicerContext
    ) -> router_pb2.ShadowDisagreementsResponse:
        self._catalog.get_model(request.model)  # unknown model: NOT_FOUND, as ShadowReport
        if request.limit < 0:
            raise InvalidArgumentError(f"limit must be 0 or more, not {request.limit}")
        return self._samples.report(request.model, request.limit)
