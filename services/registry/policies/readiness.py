"""What the serving fleet holds READY, as the routers see it (RouterControl.ListWorkers).

The registry never talks to workers: the routers already follow every worker's status
stream, so asking them is one call per router and sees exactly what routing sees. A worker
counts once however many routers know it (by worker id, else address), and as serving when
any router says so. No router known at all (a registry on its own, static discovery without
``router_addrs``) is ``None``: no caller's traffic flows, so there is nothing to protect and
the caller decides; routers known but none answering is UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc

from modelserve.channels import internal_channel
from modelserve.discovery import Discovery
from modelserve.errors import UnavailableError
from modelserve.proto.modelserve.v1 import router_pb2, router_pb2_grpc, worker_pb2

log = logging.getLogger(__name__)
READ_TIMEOUT_S = 2.0
READY, LOADING, FAILED = (
    worker_pb2.LoadedVersion.READY,
    worker_pb2.LoadedVersion.LOADING,
    worker_pb2.LoadedVersion.FAILED,
)


@dataclass
class VersionState:
    """One version across the serving workers."""

    ready: int = 0
    loading: int = 0
    failed: list[str] = field(default_factory=list)  # "worker: reason"

    def describe(self) -> str:
        if self.ready:
            return f"READY on {self.ready} worker(s)"
        if self.loading:
            return f"LOADING on {self.loading} worker(s)"
        if self.failed:
            return "FAILED to load: " + "; ".join(self.failed)
        return "held by no serving worker"


@dataclass(frozen=True)
class Fleet:
    workers: int  # serving workers
    states: dict[tuple[str, int], VersionState]

    def state(self, model: str, version: int) -> VersionState:
        return self.states.get((model, version), VersionState())

    def not_ready(self, model: str, versions: Iterable[int]) -> dict[int, VersionState]:
        """The versions of ``versions`` no serving worker holds READY, with their state."""
        return {v: self.state(model, v) for v in sorted(versions) if not self.state(model, v).ready}

    def failed(self, model: str, version: int) -> bool:
        """Some worker failed to load it and none holds it or is still loading it."""
        found = self.state(model, version)
        return bool(found.failed) and not found.ready and not found.loading


class FleetReader:
    def __init__(self, discovery: Discovery) -> None:
        self._discovery = discovery
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def read(self) -> Fleet | None:
        addresses = [i.address for i in await self._discovery.resolve("router")]
        if not addresses:
            return None
        answers = await asyncio.gather(*(self._one(a) for a in addresses))
        found = [a for a in answers if a is not None]
        if not found:
            raise UnavailableError(
                f"cannot tell which versions are READY: no router answered ({', '.join(addresses)})"
            )
        return _merge(found)

    async def _one(self, address: str) -> router_pb2.ListWorkersResponse | None:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = internal_channel(address)
        stub = router_pb2_grpc.RouterControlStub(channel)
        try:
            answer: router_pb2.ListWorkersResponse = await stub.ListWorkers(
                router_pb2.ListWorkersRequest(), timeout=READ_TIMEOUT_S
            )
            return answer
        except grpc.aio.AioRpcError as exc:
            log.warning("router %s did not answer ListWorkers: %s", address, exc.code())
            return None

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def _merge(answers: list[router_pb2.ListWorkersResponse]) -> Fleet:
    workers: dict[str, list[worker_pb2.LoadedVersion]] = {}
    for answer in answers:
        for w in answer.workers:
            if w.serving:
                workers.setdefault(w.worker_id or w.address, list(w.versions))
    states: dict[tuple[str, int], VersionState] = {}
    for name, versions in workers.items():
        for v in versions:
            state = states.setdefault((v.model, v.version), VersionState())
            if v.state == READY:
                state.ready += 1
            elif v.state == LOADING:
                state.loading += 1
            elif v.state == FAILED:
                state.failed.append(f"{name}: {v.reason or 'load failed'}")
    return Fleet(workers=len(workers), states=states)
