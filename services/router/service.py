"""Composition root of the router: builds its parts and passes them in explicitly."""

from __future__ import annotations

from modelserve.catalog import Catalog
from modelserve.proto.inference import grpc_service_pb2, grpc_service_pb2_grpc
from modelserve.proto.modelserve.v1 import router_pb2, router_pb2_grpc
from modelserve.server import Runtime
from router.control_servicer import RouterControlServicer
from router.forwarding import Forwarder
from router.inference_servicer import RouterInferenceServicer
from router.settings import RouterSettings
from router.workers import WorkerPool


async def build(runtime: Runtime, settings: RouterSettings) -> None:
    catalog = Catalog(runtime.discovery)
    pool = WorkerPool(runtime.discovery)
    forwarder = Forwarder(
        pool=pool,
        retry_attempts=settings.retry_attempts,
        default_timeout=settings.default_timeout_seconds,
    )
    runtime.add_service(
        grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
        RouterInferenceServicer(catalog=catalog, pool=pool, forwarder=forwarder),
    )
    runtime.add_service(
        router_pb2.DESCRIPTOR.services_by_name["RouterControl"].full_name,
        router_pb2_grpc.add_RouterControlServicer_to_server,
        RouterControlServicer(catalog=catalog, pool=pool),
    )
    runtime.background(catalog.run(), "registry watch")
    runtime.background(pool.run(), "worker discovery")

    async def ready_when_synced() -> None:
        # SERVING once the catalog is synced: workers may come later (ModelInfer says
        # UNAVAILABLE until one holds the version, which routers and clients retry).
        await catalog.synced.wait()
        await runtime.set_serving(True)

    runtime.background(ready_when_synced(), "readiness")
    runtime.on_stop(pool.close)
    runtime.on_stop(catalog.close)
