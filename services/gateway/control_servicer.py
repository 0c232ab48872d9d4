"""GatewayControl: what only the gateway knows, read by the registry's canary controller."""

from __future__ import annotations

from typing import Any

from grpc import aio

from modelserve.catalog.replica import Catalog
from modelserve.catalog.version_stats import VersionStats
from modelserve.proto.modelserve.v1 import gateway_pb2_grpc, router_pb2


class GatewayControlServicer(gateway_pb2_grpc.GatewayControlServicer):
    def __init__(self, *, catalog: Catalog, rejected: VersionStats) -> None:
        self._catalog = catalog
        self._rejected = rejected

    async def VersionStats(
        self, request: router_pb2.VersionStatsRequest, context: aio.ServicerContext[Any, Any]
    ) -> router_pb2.VersionStatsResponse:
        self._catalog.get_model(request.model)  # unknown model: NOT_FOUND, as on a router
        return self._rejected.report(request.model)
