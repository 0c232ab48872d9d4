"""A worker pod replaced under its DNS name is found at once, not a refresh period later.

Two real WorkerControl servers on one port of two loopback addresses stand for the old pod and
its replacement. The router's pool follows DNS discovery with a 60 s refresh; when the old
worker goes away its lost status stream makes the pool ask discovery to look again
(``Discovery.suspect``), which finds the replacement the name now resolves to.
"""

from __future__ import annotations

import asyncio
import socket

from grpc import aio
from testsupport import eventually

from modelserve.discovery.dns import DNSDiscovery, NameNotFound
from modelserve.proto.modelserve.v1 import worker_pb2, worker_pb2_grpc
from modelserve.workers import WorkerPool
from worker.control_servicer import WorkerControlServicer
from worker.status import StatusBroadcaster


def serving_status(worker_id: str) -> StatusBroadcaster:
    status = StatusBroadcaster(worker_id)
    ready = worker_pb2.LoadedVersion(model="m", version=1, state=worker_pb2.LoadedVersion.READY)
    status.publish(worker_pb2.WorkerStatus(serving=True, versions=[ready]))
    return status


async def worker_server(host: str, port: int, status: StatusBroadcaster) -> aio.Server:
    server = aio.server()
    worker_pb2_grpc.add_WorkerControlServicer_to_server(
        WorkerControlServicer(status=status), server
    )
    assert server.add_insecure_port(f"{host}:{port}") == port
    await server.start()
    return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_lost_worker_makes_the_router_re_resolve_its_name_early() -> None:
    port = free_port()
    records = {"worker.modelserve.svc.cluster.local": ["127.0.0.1"]}

    async def resolver(host: str) -> list[str]:
        if host not in records:
            raise NameNotFound(host)
        return list(records[host])

    old_status, new_status = serving_status("old"), serving_status("new")
    old = await worker_server("127.0.0.1", port, old_status)
    new = await worker_server("127.0.0.2", port, new_status)
    discovery = DNSDiscovery(
        {"worker": [f"worker.modelserve.svc.cluster.local:{port}"]},
        refresh_s=60,
        min_refresh_s=0.05,
        resolver=resolver,
    )
    pool = WorkerPool(discovery)
    follower = asyncio.create_task(pool.run())
    try:

        async def routed_to(address: str) -> None:
            assert [e.address for e in pool.candidates("m", 1)] == [address]

        await eventually(lambda: routed_to(f"127.0.0.1:{port}"))
        records["worker.modelserve.svc.cluster.local"] = ["127.0.0.2"]  # the replacement pod
        await old.stop(0)  # the old pod goes away
        await eventually(lambda: routed_to(f"127.0.0.2:{port}"), timeout=5)  # not 60 s
        assert list(pool.workers) == [f"127.0.0.2:{port}"]
    finally:
        follower.cancel()
        await pool.close()
        await discovery.close()
        for status in (old_status, new_status):
            status.close()
        await old.stop(0)
        await new.stop(0)
