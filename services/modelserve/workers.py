"""The view of the worker fleet a router (and the gateway's direct lane) keeps: who is
serving, which versions each holds warm.

Discovery says where workers are; each worker's WorkerControl.WatchStatus stream says what it
holds and when it starts draining, so the router stops sending to a draining worker at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

import grpc

from modelserve.calls import Hop
from modelserve.channels import Endpoint, EndpointSet, pick
from modelserve.discovery import Discovery
from modelserve.proto.modelserve.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)

# The codes that count towards ejecting a worker (T34): a black-holed worker (SIGSTOPped, a
# partitioned link) fails calls only at their deadline, long before keepalive drops the
# transport, so deadlines count as UNAVAILABLE does (DEADLINE_EXCEEDED is never retried).
WORKER_EJECT_ON = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def worker_hop(retry_attempts: int, default_timeout: float | None) -> Hop:
    """The hop to workers, the router's and the gateway's direct lane's alike: retries on
    UNAVAILABLE on another worker, ejects on WORKER_EJECT_ON."""
    return Hop(
        "worker",
        attempts=1 + retry_attempts,
        default_timeout=default_timeout,
        eject_on=WORKER_EJECT_ON,
    )


@dataclass
class WorkerState:
    endpoint: Endpoint
    worker_id: str = ""
    serving: bool = False
    ready: set[tuple[str, int]] = field(default_factory=set)
    # Undeployed, still answering requests decided before (T23): routable, never READY.
    retiring: set[tuple[str, int]] = field(default_factory=set)
    # Every version the worker reported (LOADING, READY, FAILED with its reason), for the
    # registry's readiness checks (RouterControl.ListWorkers).
    versions: list[worker_pb2.LoadedVersion] = field(default_factory=list)
    failed: dict[tuple[str, int], str] = field(default_factory=dict)  # version -> reason
    task: asyncio.Task[None] | None = None


class WorkerPool:
    def __init__(self, discovery: Discovery, *, service: str = "worker") -> None:
        self._discovery = discovery
        self._service = service
        self._endpoints = EndpointSet(on_eject=self._suspect)
        self.workers: dict[str, WorkerState] = {}
        self.changed = asyncio.Event()

    def candidates(self, model: str, version: int) -> list[Endpoint]:
        key = (model, version)
        return [
            w.endpoint
            for w in self.workers.values()
            if w.serving and (key in w.ready or key in w.retiring)
        ]

    def choose(self, model: str, version: int, exclude: set[str]) -> Endpoint | None:
        return pick(self.candidates(model, version), exclude)

    def serving(self) -> list[WorkerState]:
        return [w for w in self.workers.values() if w.serving]

    def ready_versions(self) -> set[tuple[str, int]]:
        out: set[tuple[str, int]] = set()
        for w in self.serving():
            out |= w.ready
        return out

    def failed_versions(self) -> dict[tuple[str, int], str]:
        """Versions some serving worker failed to load, with its reason."""
        out: dict[tuple[str, int], str] = {}
        for w in self.serving():
            for key, reason in w.failed.items():
                out.setdefault(key, f"{w.worker_id or w.endpoint.address}: {reason}")
        return out

    async def run(self) -> None:
        """Follow discovery; keep one status subscription per worker."""
        async for instances in self._discovery.watch(self._service):
            added, removed = await self._endpoints.update(i.address for i in instances)
            for endpoint in removed:
                state = self.workers.pop(endpoint.address, None)
                if state and state.task:
                    state.task.cancel()
            for endpoint in added:
                state = WorkerState(endpoint)
                state.task = asyncio.create_task(
                    self._follow(state), name=f"follow {endpoint.address}"
                )
                self.workers[endpoint.address] = state
            self._notify()

    async def _follow(self, state: WorkerState) -> None:
        delay = 0.05
        stub = state.endpoint.stub(worker_pb2_grpc.WorkerControlStub)
        while True:
            received = False
            try:
                async for status in stub.WatchStatus(worker_pb2.WatchStatusRequest()):
                    self._apply(state, status)
                    received = True
                    delay = 0.05
            except asyncio.CancelledError:
                raise
            except grpc.RpcError as exc:
                log.debug("worker %s status stream ended: %s", state.endpoint.address, exc.code())
            if received:
                # A stream that worked and ended (the worker's connection ageing, a GOAWAY)
                # is reopened at once with routing unchanged: the worker said nothing about
                # going away (a draining worker says so first). Only a stream that cannot be
                # reopened takes the worker out of routing.
                continue
            if state.serving:
                log.warning("worker %s lost; not routing to it", state.endpoint.address)
                self._suspect(state.endpoint.address)
            state.serving = False
            self._notify()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    def _apply(self, state: WorkerState, status: worker_pb2.WorkerStatus) -> None:
        state.worker_id = status.worker_id
        state.serving = status.serving and not status.draining
        state.ready = {
            (v.model, v.version)
            for v in status.versions
            if v.state == worker_pb2.LoadedVersion.READY
        }
        state.retiring = {
            (v.model, v.version)
            for v in status.versions
            if v.state == worker_pb2.LoadedVersion.RETIRING
        }
        state.versions = list(status.versions)
        state.failed = {
            (v.model, v.version): v.reason
            for v in status.versions
            if v.state == worker_pb2.LoadedVersion.FAILED
        }
        self._notify()

    def _suspect(self, address: str) -> None:
        """Ask discovery to look again early: a pod replaced under a DNS name is found sooner."""
        self._discovery.suspect(self._service, address)

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def close(self) -> None:
        for state in self.workers.values():
            if state.task:
                state.task.cancel()
        await self._endpoints.close()
