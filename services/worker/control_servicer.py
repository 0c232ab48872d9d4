"""WorkerControl: routers watch what this worker holds and whether it takes traffic."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio

from modelserve.proto.modelserve.v1 import worker_pb2, worker_pb2_grpc
from worker.status import StatusBroadcaster


class WorkerControlServicer(worker_pb2_grpc.WorkerControlServicer):
    def __init__(self, *, status: StatusBroadcaster) -> None:
        self._status = status

    async def WatchStatus(
        self, request: worker_pb2.WatchStatusRequest, context: aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.WorkerStatus]:
        async for status in self._status.subscribe():
            yield status
