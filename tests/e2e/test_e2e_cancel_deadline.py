"""T09/T12 over gRPC through the whole suite, with a model that really takes seconds: a caller
whose deadline passes, or who cancels, while its run executes gets its status and the worker
stops the ONNX Runtime run (RunOptions.terminate; modelserve_stopped_runs_total +1) instead of
finishing it for nobody; one cancelled while queued never runs; the worker's queue-depth and
running-batch gauges come back to 0. Bounds are loose on purpose (a shared 2-core box): what is
asserted is that the run is stopped, not how fast."""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import numpy as np
import pytest
from slowmodel import WIDTH, iterations_for, push_slow, slow_model
from testsupport import eventually

from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import encode_inputs

MODEL = "slow_loop"


def metric(suite: Suite, name: str) -> float:
    port = suite.processes["worker"].metrics_port
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name if "{" in name else name + "{") and f'model="{MODEL}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
async def slow(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> str:
    return await push_slow(suite, MODEL, tmp_path_factory.mktemp("slow") / "slow.onnx")


def request() -> pb.ModelInferRequest:
    built = pb.ModelInferRequest(model_name=MODEL)
    encode_inputs(built, {"x": np.ones((1, WIDTH), np.float32)})
    return built


async def idle(suite: Suite) -> None:
    assert metric(suite, "modelserve_queue_depth") == 0
    assert metric(suite, "modelserve_batches_running") == 0


async def test_a_deadline_that_passes_mid_run_stops_the_run(suite: Suite, slow: str) -> None:
    before = metric(suite, "modelserve_stopped_runs_total")
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ModelInfer(request(), timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    async def stopped() -> None:
        assert metric(suite, "modelserve_stopped_runs_total") >= before + 1
        await idle(suite)

    await eventually(stopped, timeout=20)


async def test_a_cancel_mid_run_stops_it_and_one_cancelled_while_queued_never_runs(
    suite: Suite, slow: str
) -> None:
    before = metric(suite, "modelserve_stopped_runs_total")
    runs_before = metric(suite, "modelserve_batch_size_count")
    dropped_before = metric(
        suite, 'modelserve_queue_refused_total{model="slow_loop",reason="cancelled"'
    )
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        running = asyncio.ensure_future(stub.ModelInfer(request(), timeout=60))

        async def started() -> None:
            assert metric(suite, "modelserve_batches_running") == 1

        await eventually(started, timeout=20)
        # A second call queues behind it in the worker (sent to the router: the gateway
        # would hold it in its own merge lane, one call in flight per lane).
        second = pb.ModelInferRequest(model_name=MODEL)
        encode_inputs(second, {"x": np.full((1, WIDTH), 2.0, np.float32)})
        to_router = grpc.aio.insecure_channel(suite.address("router"))
        router = pb_grpc.GRPCInferenceServiceStub(to_router)
        queued = asyncio.ensure_future(router.ModelInfer(second, timeout=60))

        async def waiting() -> None:
            assert metric(suite, "modelserve_queue_depth") == 1

        await eventually(waiting, timeout=20)
        # The queued call's cancel first, and seen by the worker, before the running one's:
        # the two travel on different connections, and had the running one's arrived first,
        # the queued call would have started (and been stopped) in between.
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued

        async def withdrawn() -> None:
            assert metric(suite, "modelserve_queue_depth") == 0

        await eventually(withdrawn, timeout=20)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await to_router.close()

    async def cleaned() -> None:
        assert metric(suite, "modelserve_stopped_runs_total") >= before + 1
        await idle(suite)

    await eventually(cleaned, timeout=20)
    await asyncio.sleep(1.0)  # had the queued one started, it would be running or stopped now
    # Exactly one run was stopped (the running one); none completed (the histogram counts
    # completed runs): the queued call never ran.
    assert metric(suite, "modelserve_stopped_runs_total") == before + 1
    assert metric(suite, "modelserve_batch_size_count") == runs_before
    # The queued one is counted as dropped before its run (T12's "cancelled" metric, queued).
    dropped = metric(suite, 'modelserve_queue_refused_total{model="slow_loop",reason="cancelled"')
    assert dropped == dropped_before + 1
    await idle(suite)


def test_the_slow_model_really_is_slow() -> None:
    """The premise: one run of the pushed model takes far longer than the 0.5 s deadline above
    (the turn count is calibrated per machine; this checks the calibration)."""
    import onnxruntime as ort

    model = slow_model(iterations_for(3.0))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"x": np.ones((1, WIDTH), np.float32)}
    started = time.perf_counter()
    session.run(None, feed)
    assert time.perf_counter() - started > 1.5
