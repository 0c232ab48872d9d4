"""Composition root of the worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

from modelserve.artifact_uris import FetchOptions
from modelserve.catalog.composite_replica import CompositeCatalog
from modelserve.catalog.replica import Catalog
from modelserve.channels import EndpointSet, follow
from modelserve.interceptors import wrap_behaviour
from modelserve.proto.modelserve.v1 import worker_pb2, worker_pb2_grpc
from modelserve.server import Runtime
from modelserve.v2.servicer import serve_v2
from worker import gpu_metrics
from worker.artifacts import ArtifactCache
from worker.control_servicer import WorkerControlServicer
from worker.dataplane import WorkerDataPlane
from worker.lane import WorkerLaneServicer
from worker.loader import ModelManager
from worker.settings import WorkerSettings
from worker.status import StatusBroadcaster

META_VALUE_LIMIT = 512  # Consul's limit on one meta value
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


async def build(runtime: Runtime, settings: WorkerSettings) -> None:
    gpu_metrics.install()  # GPU series when NVML finds a GPU; else one INFO line
    catalog = Catalog(runtime.discovery)
    composites = CompositeCatalog(runtime.discovery, catalog)
    registries = EndpointSet()
    status = StatusBroadcaster(settings.instance_id or f"worker-{id(runtime):x}")
    draining = False

    def publish() -> None:
        versions = manager.status_versions()
        serving = runtime.serving and not draining
        status.publish(
            worker_pb2.WorkerStatus(serving=serving, draining=draining, versions=versions)
        )
        ready = ",".join(
            f"{v.model}:{v.version}" for v in versions if v.state == worker_pb2.LoadedVersion.READY
        )
        if len(ready) > META_VALUE_LIMIT:
            ready = ready[: META_VALUE_LIMIT - 3] + "..."
        if runtime.meta.get("ready_versions") != ready:
            runtime.background(runtime.update_meta({"ready_versions": ready}), "meta")
        runtime.set_named_health(manager.models_ready())

    manager = ModelManager(
        catalog=catalog,
        registries=registries,
        artifacts=ArtifactCache(
            Path(settings.data_dir),
            direct_fetch=settings.artifact_direct_fetch_enabled,
            fetch_options=FetchOptions(
                timeout_s=settings.artifact_fetch_timeout_seconds,
                s3_endpoint_url=settings.s3_endpoint_url,
            ),
        ),
        only_models={m.strip() for m in settings.models.split(",") if m.strip()},
        gpu_mem_limit=settings.gpu_mem_limit_bytes,
        io_binding=settings.io_binding,
        inline_max_us=settings.inline_max_us,
        allow_spinning=settings.ort_spinning_enabled,
        unload_grace=settings.unload_grace_seconds,
        on_change=publish,
        pinned=composites.pinned_versions,
        load_retry_count=settings.model_load_retry_count,
    )
    composites.on_change(manager.reconcile)
    v2 = serve_v2(
        runtime,
        WorkerDataPlane(
            catalog=catalog, manager=manager, min_budget_s=settings.min_budget_ms / 1000
        ),
    )
    # The gateway's stream lane: each message through ModelInfer as the server wraps it.
    lane = WorkerLaneServicer(wrap_behaviour(MODEL_INFER, v2.ModelInfer, False, runtime.behaviours))
    runtime.add_service(
        worker_pb2.DESCRIPTOR.services_by_name["WorkerLane"].full_name,
        worker_pb2_grpc.add_WorkerLaneServicer_to_server,
        lane,
    )
    runtime.add_service(
        worker_pb2.DESCRIPTOR.services_by_name["WorkerControl"].full_name,
        worker_pb2_grpc.add_WorkerControlServicer_to_server,
        WorkerControlServicer(status=status),
    )
    runtime.background(follow(runtime.discovery, "registry", registries), "registry discovery")
    runtime.background(catalog.run(), "registry watch")
    runtime.background(composites.run(), "composite watch")

    # SERVING once the first snapshot is applied and, with strict readiness, once every
    # version it deployed is READY or FAILED (so Consul never passes a worker still loading,
    # T26). Versions deployed later load while it serves; routers send each version only once
    # this worker reports it READY.
    warm = asyncio.Event()

    async def wait_warm() -> None:
        await catalog.synced.wait()
        if settings.strict_readiness_enabled:
            await manager.settled()
        warm.set()

    runtime.background(wait_warm(), "strict readiness")
    runtime.serve_when(warm, then=publish)

    async def start_draining() -> None:
        nonlocal draining
        draining = True
        publish()
        lane.drain()

    async def end_status_streams() -> None:
        status.close()

    runtime.on_drain(start_draining)
    runtime.before_stop(end_status_streams)
    runtime.on_stop(manager.close)
    runtime.on_stop(registries.close)
    runtime.on_stop(catalog.close)
    runtime.on_stop(composites.close)
