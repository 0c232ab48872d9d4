"""Reading what the routers and gateways counted per version for a canary, and whether some
worker holds the candidate (RouterControl.ListWorkers).

Routers count every routed call (RouterControl.VersionStats); gateways count the requests
they rejected after deciding the version (GatewayControl.VersionStats), which never reached a
router. The two add up without counting any call twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc

from modelserve.channels import internal_channel
from modelserve.discovery import Discovery
from modelserve.proto.modelserve.v1 import gateway_pb2_grpc, router_pb2, router_pb2_grpc
from registry.canary.gates import CanarySpec

log = logging.getLogger(__name__)
READ_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class RouterFigures:
    """One router's (or gateway's) VersionStats answer for the canary's model."""

    stats: router_pb2.VersionStatsResponse

    def counts(self, version: int) -> tuple[int, int]:
        for v in self.stats.versions:
            if v.version == version:
                return v.requests, v.errors
        return 0, 0

    def latencies_since(self, version: int, unix_ms: int) -> list[float]:
        for v in self.stats.versions:
            if v.version == version:
                return [
                    s for s, t in zip(v.latency_s, v.ended_unix_ms, strict=True) if t >= unix_ms
                ]
        return []


@dataclass(frozen=True)
class Reading:
    baseline: int
    candidate: int
    routers: dict[str, RouterFigures] = field(default_factory=dict)
    candidate_ready: bool = False
    gateways: dict[str, RouterFigures] = field(default_factory=dict)

    def sources(self) -> dict[str, RouterFigures]:
        """Every answer, routers' and gateways' apart (one address could run both)."""
        return {
            **{f"router {a}": f for a, f in self.routers.items()},
            **{f"gateway {a}": f for a, f in self.gateways.items()},
        }


class RouterReader:
    """Reads every router and gateway discovery knows (or the spec names); one that does not
    answer is left out of this round (its calls count again once it answers)."""

    def __init__(self, discovery: Discovery) -> None:
        self._discovery = discovery
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def __call__(self, spec: CanarySpec) -> Reading:
        addresses = list(spec.routers) or [
            i.address for i in await self._discovery.resolve("router")
        ]
        gateway_addresses = list(spec.gateways) or [
            i.address for i in await self._discovery.resolve("gateway")
        ]
        answers, rejected = await asyncio.gather(
            asyncio.gather(*(self._one(a, spec) for a in addresses)),
            asyncio.gather(*(self._gateway(a, spec) for a in gateway_addresses)),
        )
        routers = {
            a: figures for a, (figures, _) in zip(addresses, answers, strict=True) if figures
        }
        gateways = {a: f for a, f in zip(gateway_addresses, rejected, strict=True) if f}
        ready = any(r for _, r in answers)
        return Reading(spec.baseline, spec.candidate, routers, ready, gateways)

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = internal_channel(address)
        return channel

    async def _gateway(self, address: str, spec: CanarySpec) -> RouterFigures | None:
        stub = gateway_pb2_grpc.GatewayControlStub(self._channel(address))
        try:
            stats = await stub.VersionStats(
                router_pb2.VersionStatsRequest(model=spec.model), timeout=READ_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "canary of %s: gateway %s did not answer: %s", spec.model, address, exc.code()
            )
            return None
        return RouterFigures(stats)

    async def _one(self, address: str, spec: CanarySpec) -> tuple[RouterFigures | None, bool]:
        stub = router_pb2_grpc.RouterControlStub(self._channel(address))
        try:
            stats = await stub.VersionStats(
                router_pb2.VersionStatsRequest(model=spec.model), timeout=READ_TIMEOUT_S
            )
            workers = await stub.ListWorkers(
                router_pb2.ListWorkersRequest(), timeout=READ_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "canary of %s: router %s did not answer: %s", spec.model, address, exc.code()
            )
            return None, False
        wanted = f"{spec.model}:{spec.candidate}"
        ready = any(w.serving and wanted in w.ready_versions for w in workers.workers)
        return RouterFigures(stats), ready

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
