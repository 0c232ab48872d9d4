"""The worker's status, broadcast to every router that watches it.

Subscribers always get the latest snapshot; intermediate states may be coalesced, so a slow
router never makes the worker buffer anything (bounded by construction).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from modelserve.proto.modelserve.v1 import worker_pb2


class StatusBroadcaster:
    def __init__(self, worker_id: str) -> None:
        self._status = worker_pb2.WorkerStatus(worker_id=worker_id)
        self._changed = asyncio.Event()
        self._closed = False

    def close(self) -> None:
        """End every subscription (at shutdown: watchers reconnect elsewhere)."""
        self._closed = True
        self._changed.set()

    @property
    def current(self) -> worker_pb2.WorkerStatus:
        return self._status

    def publish(self, status: worker_pb2.WorkerStatus) -> None:
        status.sequence = self._status.sequence + 1
        status.worker_id = status.worker_id or self._status.worker_id
        self._status = status
        self._changed.set()
        self._changed = asyncio.Event()

    async def subscribe(self) -> AsyncIterator[worker_pb2.WorkerStatus]:
        last = -1
        while not self._closed:
            status = self._status
            if status.sequence != last:
                last = status.sequence
                yield status
            if status is self._status and not self._closed:
                await self._changed.wait()
