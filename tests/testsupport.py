"""Helpers every test may import (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# A process serving only grpc.health.v1 with the internal server options, printing its port
# (`python -c HEALTH_SERVER_SCRIPT`): a real peer to kill -9 or SIGSTOP in tests.
HEALTH_SERVER_SCRIPT = """
import asyncio, sys
from grpc import aio
from grpc_health.v1 import health, health_pb2_grpc
from modelserve.server import INTERNAL_SERVER_OPTIONS

async def main():
    server = aio.server(options=INTERNAL_SERVER_OPTIONS)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


async def eventually(
    check: Callable[[], Awaitable[T]], *, timeout: float = 20.0, interval: float = 0.05
) -> T:
    """Await ``check`` until it returns without raising; re-raise its last error at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except (AssertionError, Exception):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(interval)
