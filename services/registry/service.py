"""Composition root of the registry."""

from __future__ import annotations

from pathlib import Path

from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc
from modelserve.server import Runtime
from registry.registry_servicer import RegistryServicer
from registry.settings import RegistrySettings
from registry.store import RegistryStore
from registry.watch import WatchHub


async def build(runtime: Runtime, settings: RegistrySettings) -> None:
    hub = WatchHub()
    store = RegistryStore(Path(settings.data_dir), on_change=hub.publish_threadsafe)
    servicer = RegistryServicer(
        store=store, hub=hub, max_artifact_bytes=settings.max_artifact_bytes
    )
    runtime.add_service(
        registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name,
        registry_pb2_grpc.add_RegistryServicer_to_server,
        servicer,
    )

    async def end_watches() -> None:
        hub.close()  # watchers get UNAVAILABLE and reconnect to another registry

    async def close() -> None:
        servicer.close()
        store.close()

    runtime.before_stop(end_watches)
    runtime.on_stop(close)

    async def ready() -> None:
        await runtime.set_serving(True)  # the store is open: nothing to warm

    runtime.background(ready(), "readiness")
