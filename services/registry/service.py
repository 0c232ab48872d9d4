"""Composition root of the registry."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from modelserve.artifact_uris import FetchOptions
from modelserve.proto.modelserve.v1 import (
    composite_pb2,
    composite_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from modelserve.server import Runtime
from registry.canary import wiring as canary_service
from registry.composites.servicer import CompositeServicer
from registry.composites.store import CompositeHub, CompositeStore
from registry.experiments.servicer import ExperimentServicer
from registry.experiments.store import ExperimentStore
from registry.leases import ControllerLease, default_replica_id
from registry.ownership import TrafficOwners
from registry.policies.readiness import FleetReader
from registry.registry_servicer import RegistryServicer
from registry.settings import RegistrySettings
from registry.store import RegistryStore
from registry.watch import WatchHub

log = logging.getLogger(__name__)


async def build(runtime: Runtime, settings: RegistrySettings) -> None:
    hub = WatchHub()
    url = settings.registry_database_url
    data_dir = Path(settings.data_dir)
    store = RegistryStore(data_dir, database_url=url, on_change=hub.publish_threadsafe)
    store.follow()  # on PostgreSQL: other replicas' writes reach this one's watchers too
    composites = CompositeStore(data_dir / "composites.sqlite3", store, database_url=url)
    store_thread = ThreadPoolExecutor(1, "registry-db")  # shared with canaries (their writes)
    replica = settings.replica_id or default_replica_id()
    # A lease outlives a few controller rounds, so a busy round never loses it by accident.
    ttl_s = max(settings.lease_seconds, 3 * settings.canary_interval_seconds)

    def lease(name: str) -> ControllerLease:
        return ControllerLease(store, store_thread, name, replica, ttl_s)

    owners = TrafficOwners()
    servicer = RegistryServicer(
        store=store,
        hub=hub,
        max_artifact_bytes=settings.max_artifact_bytes,
        is_composite=composites.__contains__,
        store_executor=store_thread,
        owners=owners,
        fleet=FleetReader(runtime.discovery),
        policy_ready_timeout_s=settings.policy_ready_timeout_seconds,
        artifact_uri_prefixes=[
            p.strip() for p in settings.artifact_uri_prefixes.split(",") if p.strip()
        ],
        artifact_fetch=FetchOptions(
            timeout_s=settings.artifact_fetch_timeout_seconds,
            s3_endpoint_url=settings.s3_endpoint_url,
        ),
    )
    servicer.gate.lease = gate_lease = lease("policy-gate")
    canary_lease = lease("canary-controller")
    canaries = canary_service.install(
        runtime, settings, store, store_thread, servicer.gate, canary_lease
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
    experiments = ExperimentStore(data_dir / "experiments.sqlite3", store, database_url=url)
    experiment_servicer = ExperimentServicer(store=experiments, gate=servicer.gate)
    runtime.add_service(
        experiments_pb2.DESCRIPTOR.services_by_name["Experiments"].full_name,
        experiments_pb2_grpc.add_ExperimentsServicer_to_server,
        experiment_servicer,
    )
    owners.add("canary", canaries.running_canary, canaries.abort_for)
    owners.add("experiment", experiment_servicer.running_on, experiment_servicer.stop_on)
    runtime.background(servicer.gate.run(), "pending policies")

    async def end_watches() -> None:
        hub.close()  # watchers get UNAVAILABLE and reconnect to another registry
        composite_hub.close()

    async def close() -> None:
        for held in (gate_lease, canary_lease):  # the other replicas need not wait them out
            try:
                held.release()
            except Exception:
                log.warning("could not release lease %s", held.name, exc_info=True)
        await servicer.gate.close()
        servicer.close()
        composites.close()
        experiments.close()
        store.close()

    runtime.before_stop(end_watches)
    runtime.on_stop(close)

    runtime.background(runtime.set_serving(True), "readiness")  # the store is open: no warmup
