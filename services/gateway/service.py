"""Composition root of the gateway."""

from __future__ import annotations

import modelserve
from gateway.gateway_servicer import GatewayServicer
from gateway.merging import RequestMerger
from gateway.settings import GatewaySettings
from gateway.upstream import RouterClient
from modelserve.catalog.composite_replica import CompositeCatalog
from modelserve.catalog.replica import Catalog
from modelserve.channels import EndpointSet, follow
from modelserve.proto.inference import grpc_service_pb2, grpc_service_pb2_grpc
from modelserve.server import Runtime


async def build(runtime: Runtime, settings: GatewaySettings) -> None:
    catalog = Catalog(runtime.discovery)
    composites = CompositeCatalog(runtime.discovery, catalog)
    routers = EndpointSet(max_message_bytes=max(settings.max_receive_message_bytes, 64 << 20))
    client = RouterClient(
        routers=routers,
        default_deadline=settings.default_deadline_seconds,
        min_deadline=settings.min_deadline_seconds,
        max_deadline=settings.max_deadline_seconds,
    )
    runtime.add_service(
        grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
        GatewayServicer(
            catalog=catalog,
            routers=client,
            merger=RequestMerger(
                forward=client.infer,
                max_in_flight=settings.merge_max_in_flight if settings.merge_enabled else 1 << 30,
            ),
            version=modelserve.__version__,
            composites=composites,
        ),
    )
    runtime.background(catalog.run(), "registry watch")
    runtime.background(composites.run(), "composite watch")
    runtime.background(follow(runtime.discovery, "router", routers), "router discovery")

    async def ready_when_synced() -> None:
        # Routers may appear later under consul; until then ModelInfer answers UNAVAILABLE.
        await catalog.synced.wait()
        await runtime.set_serving(True)

    runtime.background(ready_when_synced(), "readiness")
    runtime.on_stop(routers.close)
    runtime.on_stop(catalog.close)
    runtime.on_stop(composites.close)
