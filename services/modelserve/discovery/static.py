"""Static discovery: addresses from configuration, what ``modelserve up`` uses.

Every configured address counts as passing; the clients' own ejection handles dead ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence

from modelserve.discovery.base import Discovery, Instance, Registration


class StaticDiscovery(Discovery):
    def __init__(self, addresses: Mapping[str, Sequence[str]]) -> None:
        self._addresses = {svc: [a for a in addrs if a] for svc, addrs in addresses.items()}

    async def register(self, registration: Registration) -> None:
        return None

    async def update_meta(self, registration: Registration) -> None:
        return None

    async def deregister(self, registration: Registration) -> None:
        return None

    async def resolve(self, service: str) -> list[Instance]:
        return [
            Instance(service=service, instance_id=f"{service}-{addr}", address=addr)
            for addr in self._addresses.get(service, [])
        ]

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        yield await self.resolve(service)
        # Static addresses never change: park until cancelled.
        await asyncio.Event().wait()
