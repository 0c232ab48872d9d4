"""T13, the state-cleanup matrix (Triton L0_grpc_state_cleanup: StateNew == StateRelease):
every outcome {OK, INVALID_ARGUMENT, DEADLINE_EXCEEDED, CANCELLED} of a request sent as a
unary ModelInfer or inside a ModelStreamInfer stream leaves nothing behind at any hop. After
each one the per-request state every service exports goes back to what it was before the
matrix (in-flight RPCs by method, admitted RPCs, in-flight per model, outbound calls
outstanding by peer, the worker's queue depth and running batches), and the inference-specific
series are 0. Server shutdown is the T28 drain tests' case (a worker SIGTERMed mid-stream).
The gateway's lane stream to the worker is not per-request state: it is open in the baseline,
and a case that left one more (or none) would show as a changed series."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import grpc
import httpx
import numpy as np
import pytest
from slowmodel import WIDTH, push_slow
from testsupport import eventually

from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import encode_inputs

MODEL = "slow_cleanup"
SERVICES = ("gateway", "router", "worker")
# Per-request state, as Prometheus series: each must come back to its value before the matrix.
GAUGES = (
    "modelserve_rpc_in_flight",
    "modelserve_rpcs_in_flight",
    "modelserve_model_in_flight",
    "modelserve_calls_outstanding",
    "modelserve_queue_depth",
    "modelserve_batches_running",
)
INFERENCE = ("ModelInfer", "ModelStreamInfer")
Stub = pb_grpc.GRPCInferenceServiceStub


def gauges(suite: Suite) -> dict[str, float]:
    """Every sample of GAUGES at every service, keyed by service and series (labels kept)."""
    samples: dict[str, float] = {}
    for service in SERVICES:
        port = suite.processes[service].metrics_port
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(GAUGES):
                series, value = line.rsplit(" ", 1)
                samples[f"{service} {series}"] = float(value)
    return samples


def inference_state(samples: dict[str, float]) -> dict[str, float]:
    """The series that count only inference requests: all must be 0 when idle."""
    return {
        k: v
        for k, v in samples.items()
        if v
        and (
            any(f'method="{m}"' in k for m in INFERENCE)
            or "modelserve_model_in_flight" in k
            or "modelserve_queue_depth" in k
            or "modelserve_batches_running" in k
            or 'peer="worker"' in k
            or 'peer="router"' in k
        )
    }


@pytest.fixture(scope="module")
async def slow(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> str:
    # About 3 s a run (turns calibrated per machine): a 0.3 s deadline or a cancel lands mid-run.
    path = tmp_path_factory.mktemp("cleanup") / "slow.onnx"
    return await push_slow(suite, MODEL, path)


def good() -> pb.ModelInferRequest:
    built = pb.ModelInferRequest(model_name=MODEL)
    encode_inputs(built, {"x": np.ones((1, WIDTH), np.float32)})
    return built


def bad() -> pb.ModelInferRequest:
    built = pb.ModelInferRequest(model_name=MODEL)
    encode_inputs(built, {"x": np.ones((1, WIDTH), np.float64)})  # FP64 for FP32
    return built


async def unary(
    stub: pb_grpc.GRPCInferenceServiceStub, suite: Suite, outcome: str
) -> grpc.StatusCode:
    request = bad() if outcome == "invalid" else good()
    call = stub.ModelInfer(request, timeout=0.3 if outcome == "deadline" else 60)
    if outcome == "cancel":
        await running_somewhere(suite)
        call.cancel()
    try:
        await call
    except asyncio.CancelledError:
        return grpc.StatusCode.CANCELLED
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def stream(
    stub: pb_grpc.GRPCInferenceServiceStub, suite: Suite, outcome: str
) -> grpc.StatusCode:
    request = bad() if outcome == "invalid" else good()

    async def requests() -> AsyncIterator[pb.ModelInferRequest]:
        yield request
        await asyncio.sleep(120)  # the stream stays open until it ends one way or another

    call = stub.ModelStreamInfer(requests(), timeout=0.3 if outcome == "deadline" else 60)
    if outcome == "cancel":
        await running_somewhere(suite)
        call.cancel()
    try:
        reply = await call.read()
    except asyncio.CancelledError:
        return grpc.StatusCode.CANCELLED
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    call.cancel()  # answered: the client ends the stream
    if reply.error_message:
        # A stream answers a failed request in-band ("CODE: message") and stays open, as
        # Triton's does; a deadline can end the request in-band before it ends the stream.
        return grpc.StatusCode[reply.error_message.split(":", 1)[0]]
    return grpc.StatusCode.OK


async def running_somewhere(suite: Suite) -> None:
    async def started() -> None:
        assert any(v and "modelserve_batches_running" in k for k, v in gauges(suite).items())

    await eventually(started, timeout=30)


async def released(suite: Suite, baseline: dict[str, float], case: str) -> None:
    now = gauges(suite)
    assert not inference_state(now), (case, inference_state(now))
    changed = {k: v for k, v in now.items() if baseline.get(k, 0.0) != v}
    assert not changed, (case, changed)


EXPECTED = {
    "ok": grpc.StatusCode.OK,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
    "cancel": grpc.StatusCode.CANCELLED,
}


async def test_every_outcome_of_unary_and_stream_calls_leaves_no_state_behind(
    suite: Suite, slow: str
) -> None:
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # The gateway's stream lane to the worker (gateway/stream_lane.py) opens on the first
        # call and stays, as a connection does: the baseline is a gateway that has served.
        assert await unary(stub, suite, "ok") == grpc.StatusCode.OK
        baseline = gauges(suite)
        assert not inference_state(baseline), inference_state(baseline)
        for kind, send in (("unary", unary), ("stream", stream)):
            for outcome, code in EXPECTED.items():
                got = await send(stub, suite, outcome)
                assert got == code, f"{kind} {outcome}: {got}"

                await eventually(
                    partial(released, suite, baseline, f"{kind} {outcome}"), timeout=30
                )
