"""T23 through the whole suite: unloading a model while its requests run and wait in the
worker's queue. The requests already accepted all finish OK (the worker keeps an undeployed
version's session for ``unload_grace_seconds``, 5 s, before it closes it); a request sent after
the unload gets UNAVAILABLE saying how to load it again (our documented deviation from the
case's NOT_FOUND: the model is known, only not deployed); nothing crashes and the model serves
again once loaded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from slowmodel import WIDTH, push_slow
from testsupport import eventually

from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import encode_inputs

MODEL = "slow_unload"


def request() -> pb.ModelInferRequest:
    built = pb.ModelInferRequest(model_name=MODEL)
    encode_inputs(built, {"x": np.ones((1, WIDTH), np.float32)})
    return built


async def test_requests_in_flight_during_an_unload_finish_ok(suite: Suite, tmp_path: Path) -> None:
    # One instance, batch size 1, ~0.8 s a run: of three calls one runs, two wait in the queue.
    await push_slow(suite, MODEL, tmp_path / "slow.onnx", seconds=0.8)
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        in_flight = [
            asyncio.ensure_future(stub.ModelInfer(request(), timeout=20)) for _ in range(3)
        ]
        await asyncio.sleep(0.3)  # all three are at the worker: one running, two queued
        await stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name=MODEL), timeout=30
        )
        answers = await asyncio.gather(*in_flight, return_exceptions=True)
        failed = [a for a in answers if isinstance(a, BaseException)]
        assert not failed, failed
        assert all(a.model_name == MODEL for a in answers)  # type: ignore[union-attr]

        with pytest.raises(grpc.aio.AioRpcError) as after:
            await stub.ModelInfer(request(), timeout=5)
        assert after.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "unloaded" in (after.value.details() or "")

        await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=60)

        async def serves() -> None:
            await stub.ModelInfer(request(), timeout=10)

        await eventually(serves, timeout=60)
