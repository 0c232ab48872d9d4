"""Admission at the public edge: idle streams can take only the stream budget. 1,100 idle
ModelStreamInfer streams against the gateway (limit 1,024): the ones over the limit are refused
RESOURCE_EXHAUSTED with a retry pushback, health still says SERVING, and a normal request is
still answered; a flood of 2,000 more refused streams while saturated costs the gateway no
memory (T17)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import decode_outputs, encode_inputs

STREAMS = 1100


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def refused_wave(
    stub: pb_grpc.GRPCInferenceServiceStub,
    idle: Callable[[], AsyncIterator[pb.ModelInferRequest]],
    n: int,
) -> list[str]:
    """Open ``n`` more streams while the stream budget is full; each one's outcome."""

    async def one() -> str:
        call = stub.ModelStreamInfer(idle())
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            pushback = dict(exc.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
            return f"{exc.code().name.lower()} pushback={pushback}".replace(
                "resource_exhausted", "refused"
            )
        return "accepted"

    return list(await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), 20))


async def test_idle_streams_never_starve_health_or_unary_calls(suite: Suite) -> None:
    release = asyncio.Event()

    async def idle() -> AsyncIterator[pb.ModelInferRequest]:
        await release.wait()
        return
        yield  # an async generator that sends nothing until released

    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [stub.ModelStreamInfer(idle()) for _ in range(STREAMS)]

        async def outcome(call: grpc.aio.StreamStreamCall) -> str:
            try:
                async for _ in call:
                    pass
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    pushback = dict(exc.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
                    return f"refused pushback={pushback}"
                return exc.code().name
            return "ended"

        waiting = [asyncio.create_task(outcome(c)) for c in calls]
        # The refusals come back at once; the accepted streams stay open until released.
        await asyncio.wait(waiting, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(1.0)  # let every stream be accepted or refused
        refused = [t.result() for t in waiting if t.done()]
        assert refused and all(r == "refused pushback=100" for r in refused), refused[:3]
        assert len(refused) >= STREAMS - 1024

        # T17: saturated, the gateway's memory stays flat under a flood of refused streams
        # (each refusal costs O(1), nothing is kept): 2,000 more, 100 at a time, after a
        # warm-up wave, grow its RSS by at most T08's 16 MiB.
        gateway_pid = suite.processes["gateway"].process.pid
        await refused_wave(stub, idle, 100)
        before = rss_mib(gateway_pid)
        flood: list[str] = []
        for _ in range(20):
            flood += await refused_wave(stub, idle, 100)
        after = rss_mib(gateway_pid)
        assert flood == ["refused pushback=100"] * 2000, Counter(flood)
        assert after - before <= 16, (before, after)

        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        request = pb.ModelInferRequest(model_name="fraud")
        encode_inputs(request, {"transaction": np.ones((1, 8), np.float32)})
        answer = await stub.ModelInfer(request, timeout=5)
        assert decode_outputs(answer)["fraud_probability"].shape == (1, 1)

        release.set()
        outcomes = await asyncio.gather(*waiting)
        assert outcomes.count("ended") == STREAMS - len(refused)
