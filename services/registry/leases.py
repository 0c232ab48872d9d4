"""ControllerLease: lets a registry replica's controller loop act only while it holds its lease.

The canary controller and the pending-policy gate each run in every replica; on a shared
database (PostgreSQL) each round first takes or renews the lease (``registry.db.lease``), and
a replica that does not hold it sits the round out, so exactly one replica judges canaries
and applies pending policies. The lease lasts ``ttl_s`` unrenewed, so when its holder dies
another replica takes over within that time; on SQLite the one process always holds it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from concurrent.futures import Executor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from registry.store import RegistryStore

log = logging.getLogger(__name__)


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ControllerLease:
    def __init__(
        self, store: RegistryStore, executor: Executor, name: str, holder: str, ttl_s: float
    ) -> None:
        self._store = store
        self._executor = executor  # the registry's store thread: a lease write is a write
        self.name = name
        self.holder = holder
        self._ttl_s = ttl_s
        self._held = False
        self._asked = -float("inf")  # monotonic time of the last take/renew

    async def held(self) -> bool:
        """Whether this replica holds the lease, taking or renewing it at most every quarter
        of its time to live (a loop may ask every half second; a write each time is waste):
        a holder's lease then always has three quarters of it left."""
        if time.monotonic() - self._asked < self._ttl_s / 4:
            return self._held
        self._asked = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            held = await loop.run_in_executor(
                self._executor, self._store.take_lease, self.name, self.holder, self._ttl_s
            )
        except Exception:  # the database is unreachable: act on nothing until it is back
            log.warning("could not renew lease %s", self.name, exc_info=True)
            held = False
        if held != self._held:
            log.info("%s %s lease %s", self.holder, "took" if held else "does not hold", self.name)
            self._held = held
        return held

    def release(self) -> None:
        """Give the lease up on a graceful stop (blocking; call on the store thread)."""
        if self._held:
            self._store.release_lease(self.name, self.holder)
            self._held = False
