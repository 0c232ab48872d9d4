"""Which versions this worker holds, kept in step with the registry.

Deployed = every version that carries a label or that the model's routing policy names, plus
the newest version of each model (so a pushed version is servable as soon as it is warm);
nothing of a model marked unloaded (RepositoryModelUnload). A
version is fetched (sha256 verified), loaded, warmed, and only then READY; one that fails stays
FAILED with its reason and the versions already serving keep serving; a failed attempt is
tried again ``model_load_retry_count`` times first (Triton's ``--model-load-retry-count``). A
version that stops being deployed is closed after ``unload_grace_seconds`` (``retiring``):
until then requests already decided for it — queued in a gateway's merge lane, in flight
through a router — are still answered (RETIRING in the status stream), while new ones
are refused where requests are decided (the catalog says unloaded or not deployed) (T23).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from modelserve.catalog.lookups import is_lookup
from modelserve.catalog.replica import Catalog
from modelserve.catalog.routing import referenced_versions
from modelserve.channels import EndpointSet
from modelserve.errors import ModelServeError, UnavailableError
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc, worker_pb2
from modelserve.tensors import TensorSpec
from worker.artifacts import ArtifactCache
from worker.batcher import DynamicBatcher
from worker.metrics import MODEL_LOAD_SECONDS, MODEL_LOADS
from worker.sessions import ModelSession
from worker.stats import VersionStats

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE_SIZE = 64  # the registry's default, for configs that leave it unset
LOAD_RETRY_DELAY_S = 0.5  # between attempts: long enough for a registry to come back

State: TypeAlias = worker_pb2.LoadedVersion.State.ValueType


@dataclass
class Held:
    record: registry_pb2.ModelVersion
    state: State = worker_pb2.LoadedVersion.LOADING
    reason: str = ""
    session: ModelSession | None = None
    stats: VersionStats | None = None
    batcher: DynamicBatcher | None = None  # None: max_batch_size 0, runs go straight through
    task: asyncio.Task[None] | None = None


def deployed_versions(
    models: dict[str, registry_pb2.Model], only: set[str]
) -> dict[tuple[str, int], registry_pb2.ModelVersion]:
    wanted: dict[tuple[str, int], registry_pb2.ModelVersion] = {}
    for name, model in models.items():
        if (only and name not in only) or not model.versions or model.unloaded:
            continue  # unloaded (RepositoryModelUnload): none of its versions is deployed
        by_number = {v.version: v for v in model.versions}
        numbers = set(model.labels.values()) | {max(by_number)}
        numbers |= referenced_versions(model)  # a split may name versions without labels
        for n in numbers:
            # A lookup has no ONNX file: the router answers it from the feature store.
            if n in by_number and not is_lookup(by_number[n]):
                wanted[(name, n)] = by_number[n]
    return wanted


RETIRING_REASON = "undeployed; answering the requests already sent to it"


class ModelManager:
    def __init__(
        self,
        *,
        catalog: Catalog,
        registries: EndpointSet,
        artifacts: ArtifactCache,
        only_models: set[str],
        gpu_mem_limit: int,
        io_binding: str = "auto",
        inline_max_us: float = 0.0,
        allow_spinning: bool = False,
        unload_grace: float,
        on_change: Callable[[], None],
        pinned: Callable[[], set[tuple[str, int]]] = set,
        load_retry_count: int = 1,
        load_retry_delay_s: float = LOAD_RETRY_DELAY_S,
    ) -> None:
        self._catalog = catalog
        self._registries = registries
        self._artifacts = artifacts
        self._only = only_models
        self._gpu_mem_limit = gpu_mem_limit
        self._io_binding = io_binding
        self._inline_max_us = inline_max_us
        self._allow_spinning = allow_spinning
        self._unload_grace = unload_grace
        self._on_change = on_change
        self._pinned = pinned  # versions composites name by number (CompositeCatalog)
        self._load_retry_count = max(load_retry_count, 0)
        self._load_retry_delay_s = load_retry_delay_s
        self._state_changed = asyncio.Event()  # set on every change (see ``settled``)
        self.held: dict[tuple[str, int], Held] = {}
        # Undeployed versions kept for ``unload_grace`` (T23): a request decided before the
        # unload (queued in a gateway's merge lane, in flight through a router) still finds
        # its version here, RETIRING in the status stream (routable for decided requests,
        # never READY for policies and readiness), and is answered; new requests are refused
        # where they are decided (the catalog says unloaded / not deployed).
        self.retiring: dict[tuple[str, int], Held] = {}
        self._load_lock = asyncio.Semaphore(1)  # one load at a time: loads compete for cores
        self._closing = False
        self._unloads: set[asyncio.Task[None]] = set()
        catalog.on_change(lambda _changed: self.reconcile())

    def get(self, model: str, version: int) -> Held:
        held = self.held.get((model, version)) or self.retiring.get((model, version))
        if held is None or held.state != worker_pb2.LoadedVersion.READY or held.session is None:
            state = (
                "not deployed" if held is None else worker_pb2.LoadedVersion.State.Name(held.state)
            )
            raise UnavailableError(
                f"model '{model}' version {version} is not ready on this worker ({state.lower()})"
            )
        return held

    def ready(self) -> list[Held]:
        return [h for h in self.held.values() if h.state == worker_pb2.LoadedVersion.READY]

    def reconcile(self) -> None:
        if self._closing:
            return
        wanted = deployed_versions(self._catalog.models, self._only)
        for name, number in self._pinned():
            model = self._catalog.models.get(name)
            found = [v for v in model.versions if v.version == number] if model else []
            if model is None or model.unloaded:
                continue
            if found and not is_lookup(found[0]) and (not self._only or name in self._only):
                wanted[(name, number)] = found[0]
        for key, record in wanted.items():
            held = self.held.get(key)
            if held is None and key in self.retiring:  # deployed again within its grace
                held = self.held[key] = self.retiring.pop(key)
            if held is None or (
                held.state == worker_pb2.LoadedVersion.FAILED
                and held.record.sha256 != record.sha256
            ):
                held = self.held[key] = Held(record=record)
                held.task = asyncio.create_task(self._load(held), name=f"load {key}")
        for key in list(self.held):
            if key not in wanted:
                task = asyncio.create_task(self._unload(key), name=f"unload {key}")
                self._unloads.add(task)
                task.add_done_callback(self._unloads.discard)
        self._changed()

    async def _load(self, held: Held) -> None:
        """Load ``held``, trying a failed load again up to ``load_retry_count`` times."""
        r = held.record
        attempts = 1 + self._load_retry_count
        for attempt in range(1, attempts + 1):
            if await self._attempt(held, final=attempt == attempts):
                return
            if self._closing or self.held.get((r.model, r.version)) is not held:
                return  # undeployed or closing meanwhile: nobody wants it any more
            log.warning(
                "loading %s v%d failed (attempt %d of %d: %s); trying again",
                r.model,
                r.version,
                attempt,
                attempts,
                held.reason,
            )
            MODEL_LOADS.labels(r.model, str(r.version), "retried").inc()
            held.reason = ""
            await asyncio.sleep(self._load_retry_delay_s)

    async def _attempt(self, held: Held, *, final: bool) -> bool:
        """One load; False when it failed and another attempt follows (``held`` stays
        LOADING). The last attempt's failure leaves ``held`` FAILED with its reason."""
        r = held.record
        started = time.perf_counter()
        session: ModelSession | None = None
        try:
            async with self._load_lock:
                endpoint = self._registries.pick()
                if endpoint is None:
                    raise UnavailableError("no registry instance to fetch the artifact from")
                stub = endpoint.stub(registry_pb2_grpc.RegistryStub)
                path = await self._artifacts.fetch(
                    stub, r.model, r.version, r.sha256, artifact_uri=r.artifact_uri
                )
                session = await ModelSession.load(
                    path,
                    model=r.model,
                    version=r.version,
                    inputs=[TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in r.inputs],
                    outputs=[TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in r.outputs],
                    execution_provider=r.config.execution_provider or "auto",
                    instance_count=max(r.config.instance_count, 1),
                    intra_op_threads=r.config.intra_op_threads,
                    gpu_mem_limit=self._gpu_mem_limit,
                    io_binding=self._io_binding,
                    allow_spinning=self._allow_spinning,
                )
                batch_sizes = (1,) if r.config.max_batch_size == 0 else _warm_sizes(r.config)
                await session.warmup(max(r.config.warmup_iterations, 1), batch_sizes)
                run_us = await session.measure_inline(max(batch_sizes), self._inline_max_us)
                session.max_waiting = r.config.max_queue_size or DEFAULT_MAX_QUEUE_SIZE
        except BaseException as exc:
            # Undeployed, stopping (SIGTERM while loading) or failed mid warm-up: a session
            # already made is closed here, its run stopped, or its ORT memory and executor
            # thread would outlive the load (T28).
            if session is not None:
                session.close(terminate=True)
            if isinstance(exc, ModelServeError):
                return self._failed(held, exc.message, final=final)
            if not isinstance(exc, Exception):
                raise  # CancelledError and friends
            log.exception("loading %s v%d failed", r.model, r.version, exc_info=exc)
            return self._failed(held, "load failed", final=final)
        if self.held.get((r.model, r.version)) is not held:  # undeployed while loading
            session.close()
            return True
        held.session, held.stats = session, VersionStats(r.model, r.version)
        held.batcher = _batcher(session, r, held.stats)
        held.state = worker_pb2.LoadedVersion.READY
        MODEL_LOADS.labels(r.model, str(r.version), "ready").inc()
        MODEL_LOAD_SECONDS.labels(r.model).observe(time.perf_counter() - started)
        log.info(
            "%s v%d ready on %s (cold start %.0f ms; largest warm batch %.0f us, %s)",
            r.model,
            r.version,
            session.execution_provider,
            session.cold_start_ms,
            run_us,
            "runs inline" if session.inline else "runs in executor",
        )
        self._changed()
        return True

    def _failed(self, held: Held, reason: str, *, final: bool) -> bool:
        held.reason = reason
        if not final:
            return False
        r = held.record
        held.state = worker_pb2.LoadedVersion.FAILED
        MODEL_LOADS.labels(r.model, str(r.version), "failed").inc()
        log.error("loading %s v%d failed: %s", r.model, r.version, reason)
        self._changed()
        return True

    async def _unload(self, key: tuple[str, int]) -> None:
        held = self.held.pop(key, None)
        if held is None:
            return
        if held.task and not held.task.done():
            held.task.cancel()
        if held.session is None:
            self._changed()
            return
        self.retiring[key] = held
        self._changed()
        await asyncio.sleep(self._unload_grace)  # in-flight requests finish first
        if self.retiring.get(key) is not held:
            return  # deployed again meanwhile (reconcile took it back), or closed
        del self.retiring[key]
        self._changed()
        if held.batcher is not None:
            held.batcher.close()
        held.session.close()
        log.info("%s v%d unloaded", *key)

    def status_versions(self) -> list[worker_pb2.LoadedVersion]:
        retiring = {id(h) for h in self.retiring.values()}
        return [
            worker_pb2.LoadedVersion(
                model=h.record.model,
                version=h.record.version,
                state=worker_pb2.LoadedVersion.RETIRING if id(h) in retiring else h.state,
                reason="undeployed; answering requests already sent"
                if id(h) in retiring
                else h.reason,
                execution_provider=h.session.execution_provider if h.session else "",
                cold_start_ms=h.session.cold_start_ms if h.session else 0.0,
            )
            for h in sorted(
                [*self.held.values(), *self.retiring.values()],
                key=lambda h: (h.record.model, h.record.version),
            )
        ]

    def _changed(self) -> None:
        self._state_changed.set()
        self._state_changed = asyncio.Event()
        self._on_change()

    def models_ready(self) -> dict[str, bool]:
        """Each model this worker holds: True when one of its versions is READY (the worker's
        per-model health names, T26)."""
        out: dict[str, bool] = {}
        for (model, _), held in self.held.items():
            out[model] = out.get(model, False) or held.state == worker_pb2.LoadedVersion.READY
        return out

    async def settled(self) -> None:
        """Return once no deployed version is LOADING (each is READY or FAILED): strict
        readiness waits for this after the first snapshot before the worker says SERVING."""
        while any(h.state == worker_pb2.LoadedVersion.LOADING for h in self.held.values()):
            await self._state_changed.wait()

    async def close(self) -> None:
        self._closing = True
        for held in [*self.held.values(), *self.retiring.values()]:
            if held.task and not held.task.done():
                held.task.cancel()
            if held.batcher is not None:
                held.batcher.close()
            if held.session is not None:
                held.session.close()
        self.held.clear()
        self.retiring.clear()


def _batcher(
    session: ModelSession, record: registry_pb2.ModelVersion, stats: VersionStats
) -> DynamicBatcher | None:
    c = record.config
    if c.max_batch_size <= 0:
        return None
    return DynamicBatcher(
        session,
        model=record.model,
        version=record.version,
        max_batch_size=c.max_batch_size,
        max_queue_delay_us=c.max_queue_delay_us,
        preferred_batch_sizes=list(c.preferred_batch_sizes),
        # 0 = unset (a record from before the field existed): RELIABILITY.md's default range.
        max_queue_size=c.max_queue_size or DEFAULT_MAX_QUEUE_SIZE,
        stats=stats,
    )


def _warm_sizes(config: registry_pb2.ServingConfig) -> tuple[int, ...]:
    """Every batch size the batcher may form is warmed before READY: ORT allocates and picks
    kernels per shape on first use, which would otherwise land on a live request. Adaptive
    batching can form any size, so warm the powers of two up to max_batch_size, the max itself
    and the preferred sizes (shapes in between reuse what these allocated)."""
    top = config.max_batch_size
    sizes = {1, top, *[s for s in config.preferred_batch_sizes if 0 < s <= top]}
    power = 2
    while power < top:
        sizes.add(power)
        power *= 2
    return tuple(sorted(sizes))
