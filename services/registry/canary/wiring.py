"""Wiring of canaries into the registry process: the store, the controller's loop and the
Canary service (kept here so the registry's composition root gains two lines, not twenty)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from modelserve.proto.modelserve.v1 import canary_pb2, canary_pb2_grpc
from modelserve.server import Runtime
from registry.canary.controller import CanaryController
from registry.canary.reader import RouterReader
from registry.canary.servicer import CanaryServicer
from registry.canary.store import CanaryStore
from registry.leases import ControllerLease
from registry.policies.gate import PolicyGate
from registry.settings import RegistrySettings
from registry.store import RegistryStore


def install(
    runtime: Runtime,
    settings: RegistrySettings,
    store: RegistryStore,
    store_executor: ThreadPoolExecutor,
    gate: PolicyGate | None = None,
    lease: ControllerLease | None = None,
) -> CanaryController:
    """``store_executor`` is the registry servicer's single store thread: canary steps are
    policy writes and must take their turn with every other write."""
    canaries = CanaryStore(
        Path(settings.data_dir) / "canaries.sqlite3", database_url=settings.registry_database_url
    )
    reader = RouterReader(runtime.discovery)
    controller = CanaryController(
        store=store,
        canaries=canaries,
        store_executor=store_executor,
        read=reader,
        interval_s=settings.canary_interval_seconds,
        gate=gate,
        lease=lease,
    )
    runtime.add_service(
        canary_pb2.DESCRIPTOR.services_by_name["Canary"].full_name,
        canary_pb2_grpc.add_CanaryServicer_to_server,
        CanaryServicer(controller=controller),
    )
    task = runtime.background(controller.run(), "canary controller")

    async def close() -> None:
        task.cancel()
        await reader.close()
        await asyncio.wrap_future(store_executor.submit(canaries.close))  # on its own thread
        store_executor.shutdown(wait=True, cancel_futures=True)

    runtime.on_stop(close)
    return controller
