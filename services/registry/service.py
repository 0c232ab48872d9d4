"""Composition root of the registry."""

from __future__ import annotations

from pathlib import Path

from modelserve.proto.modelserve.v1 import (
    composite_pb2,
    composite_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from modelserve.server import Runtime
from registry.composite_servicer import CompositeServicer
from registry.composites import CompositeHub, CompositeStore
from registry.registry_servicer import RegistryServicer
from registry.settings import RegistrySettings
from registry.store import RegistryStore
from registry.watch import WatchHub


async def build(runtime: Runtime, settings: RegistrySettings) -> None:
    hub = WatchHub()
    store = RegistryStore(Path(settings.data_dir), on_change=hub.publish_threadsafe)
    composites = CompositeStore(Path(settings.data_dir) / "composites.sqlite3", store)
    servicer = RegistryServicer(
        store=store,
        hub=hub,
        max_artifact_bytes=settings.max_artifact_bytes,
        is_composite=composites.__contains__,
    )
    runtime.add_service(
        registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name,
        registry_pb2_grpc.add_RegistryServicer_to_server,
        servicer,
    )
    composite_hub = CompositeHub()
    runtime.add_service(
        composite_pb2.DESCRIPTOR.services_by_name["CompositeRegistry"].full_name,
        composite_pb2_grpc.add_CompositeRegistryServicer_to_server,
        CompositeServicer(store=composites, hub=composite_hub),
    )

    async def end_watches() -> None:
        hub.close()  # watchers get UNAVAILABLE and reconnect to another registry
        composite_hub.close()

    async def close() -> None:
        servicer.close()
        composites.close()
        store.close()

    runtime.before_stop(end_watches)
    runtime.on_stop(close)

    async def ready() -> None:
        await runtime.set_serving(True)  # the store is open: nothing to warm

    runtime.background(ready(), "readiness")
