"""The router's status stream from a worker survives the worker's connection ageing (A9's
max_connection_age GOAWAY, which ends every stream on the connection after the grace):
routing to the worker never pauses; a worker that really goes away leaves routing at once."""

from __future__ import annotations

import asyncio

from grpc import aio
from testsupport import eventually

from modelserve.discovery.static import StaticDiscovery
from modelserve.proto.modelserve.v1 import worker_pb2, worker_pb2_grpc
from modelserve.workers import WorkerPool
from worker.control_servicer import WorkerControlServicer
from worker.status import StatusBroadcaster

AGEING = [  # the worker's CONNECTION_AGE_OPTIONS, scaled from minutes to a second
    ("grpc.max_connection_age_ms", 700),
    ("grpc.max_connection_age_grace_ms", 300),
]


async def test_status_stream_survives_connection_ageing_without_a_routing_gap() -> None:
    status = StatusBroadcaster("w1")
    status.publish(
        worker_pb2.WorkerStatus(
            serving=True,
            versions=[
                worker_pb2.LoadedVersion(model="m", version=1, state=worker_pb2.LoadedVersion.READY)
            ],
        )
    )
    server = aio.server(options=AGEING)
    worker_pb2_grpc.add_WorkerControlServicer_to_server(
        WorkerControlServicer(status=status), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    pool = WorkerPool(StaticDiscovery({"worker": [address]}))
    follower = asyncio.create_task(pool.run())
    try:

        async def routed() -> None:
            assert pool.candidates("m", 1)

        await eventually(routed)
        gaps = 0
        for _ in range(300):  # 3 s: four ageing cycles
            if not pool.candidates("m", 1):
                gaps += 1
            await asyncio.sleep(0.01)
        assert gaps == 0, f"routing to the worker paused in {gaps} of 300 samples"

        await server.stop(0)  # now it really goes away

        async def gone() -> None:
            assert not pool.candidates("m", 1)

        await eventually(gone, timeout=5)
    finally:
        follower.cancel()
        await pool.close()
        status.close()
        await server.stop(0)
