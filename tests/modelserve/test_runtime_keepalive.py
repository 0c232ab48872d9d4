"""Internal servers really permit the keepalive pings internal clients send (RELIABILITY.md,
keepalive A8). Scaled down in time (client pings every 1 s, server permits every 0.5 s, the
same ratio as 30 s vs 10 s): with a key gRPC does not read, the server keeps its 5-minute
default and answers the second idle ping with GOAWAY too_many_pings, and the channel drops to
IDLE; with the keys in INTERNAL_SERVER_OPTIONS the connection stays READY."""

from __future__ import annotations

import asyncio

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from modelserve.channels import INTERNAL_KEEPALIVE
from modelserve.server import INTERNAL_SERVER_OPTIONS

SCALED = {
    "grpc.http2.min_ping_interval_without_data_ms": 500,
    "grpc.keepalive_time_ms": 1000,
    "grpc.keepalive_timeout_ms": 1000,
}


def scaled(options: list[tuple[str, object]]) -> list[tuple[str, object]]:
    return [(k, SCALED.get(k, v)) for k, v in options]


async def test_idle_keepalive_pings_are_permitted_by_internal_servers() -> None:
    keys = dict(INTERNAL_SERVER_OPTIONS)
    # The server's interval must be the key gRPC reads, or this test proves nothing.
    assert "grpc.http2.min_ping_interval_without_data_ms" in keys, keys
    server = aio.server(options=scaled(INTERNAL_SERVER_OPTIONS))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}", options=scaled(INTERNAL_KEEPALIVE))
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        states = []
        for _ in range(10):  # 5 s idle: five client pings, two strikes would have ended it
            await asyncio.sleep(0.5)
            states.append(channel.get_state().name)
        assert set(states) == {"READY"}, states
    finally:
        await channel.close()
        await server.stop(0)
