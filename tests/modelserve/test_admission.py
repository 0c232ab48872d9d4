"""T17 on a real grpc.aio server (loopback): the global unary cap answers RESOURCE_EXHAUSTED
with ``grpc-retry-pushback-ms`` while health still answers and the in-flight count returns to
0; and the client channel (``modelserve.cli.connect.channel``, RELIABILITY.md's retry policy)
never retries a RESOURCE_EXHAUSTED and waits out a server's pushback before retrying an
UNAVAILABLE."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from testsupport import eventually

from modelserve.admission import IN_FLIGHT, REFUSED, AdmissionInterceptor
from modelserve.cli.connect import channel

INFER = "/inference.GRPCInferenceService/ModelInfer"
LIVE = "/inference.GRPCInferenceService/ServerLive"
release = asyncio.Event()
attempts: list[float] = []


async def _slow(request: bytes, context: aio.ServicerContext) -> bytes:
    await release.wait()
    return b"done"


async def _unavailable_once(request: bytes, context: aio.ServicerContext) -> bytes:
    attempts.append(time.monotonic())
    if len(attempts) == 1:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            "draining",
            trailing_metadata=(("grpc-retry-pushback-ms", "300"),),
        )
    return b"live"


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, AdmissionInterceptor]]:
    admission = AdmissionInterceptor(max_unary=2, max_streams=1)
    srv = aio.server(interceptors=[admission])
    srv.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "inference.GRPCInferenceService",
                {
                    "ModelInfer": grpc.unary_unary_rpc_method_handler(_slow),
                    "ServerLive": grpc.unary_unary_rpc_method_handler(_unavailable_once),
                },
            )
        ]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    release.clear()
    attempts.clear()
    yield f"127.0.0.1:{port}", admission
    release.set()
    await srv.stop(0)


def refused() -> float:
    return REFUSED.labels("unary")._value.get()


async def test_the_unary_cap_refuses_with_pushback_health_answers_and_nothing_leaks(
    server: tuple[str, AdmissionInterceptor],
) -> None:
    address, admission = server
    before = refused()
    async with channel(address) as ch:
        infer = ch.unary_unary(INFER)
        held = [asyncio.ensure_future(infer(b"", timeout=10)) for _ in range(2)]

        async def both_admitted() -> None:
            assert admission.unary == 2

        await eventually(both_admitted, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await infer(b"", timeout=5)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(exc.value.trailing_metadata() or ())["grpc-retry-pushback-ms"] == "100"
        assert "limit 2" in (exc.value.details() or "")
        # Health is never counted against the cap.
        checked = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
        await asyncio.sleep(0.3)  # had the client retried the refusal, it would be counted
        # Exactly one refusal: the client channel's retry policy does not retry it.
        assert refused() == before + 1
        release.set()
        assert await asyncio.gather(*held) == [b"done", b"done"]
    assert admission.unary == 0
    assert IN_FLIGHT.labels("unary")._value.get() == 0


async def test_the_client_waits_out_the_pushback_before_retrying_unavailable(
    server: tuple[str, AdmissionInterceptor],
) -> None:
    address, _ = server
    async with channel(address) as ch:
        assert await ch.unary_unary(LIVE)(b"", timeout=10) == b"live"
    assert len(attempts) == 2
    # A lower bound, not a speed: the retry came no sooner than the server asked.
    assert attempts[1] - attempts[0] >= 0.3
