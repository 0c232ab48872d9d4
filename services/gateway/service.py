"""Composition root of the gateway."""

from __future__ import annotations

from gateway.control_servicer import GatewayControlServicer
from gateway.dataplane import GatewayDataPlane
from gateway.direct import DirectLane
from gateway.settings import GatewaySettings
from gateway.stream_lane import StreamLanes
from modelserve.catalog.composite_replica import CompositeCatalog
from modelserve.catalog.replica import Catalog
from modelserve.catalog.version_stats import VersionStats
from modelserve.channels import EndpointSet, follow
from modelserve.deadlines import EdgeDeadlines
from modelserve.proto.modelserve.v1 import gateway_pb2, gateway_pb2_grpc
from modelserve.server import Runtime
from modelserve.v2.http import serve_http
from modelserve.v2.servicer import serve_v2
from modelserve.workers import WorkerPool


async def build(runtime: Runtime, settings: GatewaySettings) -> None:
    catalog = Catalog(runtime.discovery)
    composites = CompositeCatalog(runtime.discovery, catalog)
    # Written by ModelInfer (rejections, direct-lane calls), read by GatewayControl (canaries).
    rejected = VersionStats("gateway")
    routers = EndpointSet(max_message_bytes=max(settings.max_receive_message_bytes, 64 << 20))
    direct = None
    if settings.direct_worker_lane_enabled:
        # The workers' status streams, as a router keeps them, for versions that need no
        # router (gateway/direct.py).
        pool = WorkerPool(runtime.discovery)
        streams = StreamLanes() if settings.direct_lane_streams_enabled else None
        direct = DirectLane(
            catalog=catalog,
            pool=pool,
            stats=rejected,
            retry_attempts=settings.worker_retry_attempts,
            default_timeout=settings.default_deadline_seconds,
            streams=streams,
        )
        runtime.background(pool.run(), "worker discovery")
        if streams is not None:
            runtime.on_stop(streams.aclose)
        runtime.on_stop(pool.close)
    servicer = serve_v2(
        runtime,
        GatewayDataPlane(
            catalog=catalog,
            composites=composites,
            routers=routers,
            edge=EdgeDeadlines(
                default_s=settings.default_deadline_seconds,
                min_s=settings.min_deadline_seconds,
                max_s=settings.max_deadline_seconds,
            ),
            merge_max_in_flight=settings.merge_max_in_flight if settings.merge_enabled else 1 << 30,
            merge_max_bytes=settings.merge_max_bytes,
            merge_gather_turns=settings.merge_gather_turns,
            rejected=rejected,
            direct=direct,
        ),
    )
    # Registered in discovery as "gateway" (Runtime.start, under the spec's name), where the
    # canary reader looks for gateways.
    runtime.add_service(
        gateway_pb2.DESCRIPTOR.services_by_name["GatewayControl"].full_name,
        gateway_pb2_grpc.add_GatewayControlServicer_to_server,
        GatewayControlServicer(catalog=catalog, rejected=rejected),
    )
    if settings.http_port:
        # The REST face calls the same servicer: one data plane behind both ports.
        serve_http(runtime, servicer, port=settings.http_port, server=settings.http_server)
    runtime.background(catalog.run(), "registry watch")
    runtime.background(composites.run(), "composite watch")
    runtime.background(follow(runtime.discovery, "router", routers), "router discovery")

    # Routers may appear later under consul; until then ModelInfer answers UNAVAILABLE.
    runtime.serve_when(catalog.synced)
    runtime.on_stop(routers.close)
    runtime.on_stop(catalog.close)
    runtime.on_stop(composites.close)
