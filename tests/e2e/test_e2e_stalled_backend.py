"""T14: non-inference RPCs with 100 ms deadlines while the backend behind the gateway is
stalled (router, registry and worker SIGSTOPped: alive, connected, answering nothing; the
worker too, since the gateway's direct lane reaches it without the router). Every RPC ends
with OK (answered from the gateway's own replica) or DEADLINE_EXCEEDED / UNAVAILABLE, and none
hangs on the gateway's side: its in-flight RPCs go back to 0 while the backend is still
stopped, and calls sent with no deadline at all end by the edge's default one. After SIGCONT
the suite serves again. A suite of its own, so stopping processes costs no other test
anything."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from suitesupport import dump_logs, ready_suite
from testsupport import eventually

from modelserve.cli.suite import Suite, start_suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import encode_inputs

ENDED = {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE}
STALLED = ("router", "registry", "worker")


@pytest.fixture(scope="module")
def own_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    data_dir: Path = tmp_path_factory.mktemp("stalled")
    running = start_suite(data_dir, workers=1)
    try:
        asyncio.run(ready_suite(running))
    except BaseException:
        print(dump_logs(running))
        running.stop(timeout=10)
        raise
    yield running
    running.stop(timeout=20)


def in_flight(suite: Suite) -> dict[str, float]:
    port = suite.processes["gateway"].metrics_port
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = {}
    for line in text.splitlines():
        if line.startswith(("modelserve_rpc_in_flight{", "modelserve_calls_outstanding{")):
            series, value = line.rsplit(" ", 1)
            if float(value):
                found[series] = float(value)
    return found


def infer_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="fraud")
    encode_inputs(request, {"transaction": np.ones((1, 8), np.float32)})
    return request


async def test_non_inference_rpcs_end_within_their_deadline_against_a_stalled_backend(
    own_suite: Suite,
) -> None:
    suite = own_suite
    pids = [suite.processes[name].process.pid for name in STALLED]
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        calls = {
            "health Check": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=0.1),
            "ServerLive": lambda: stub.ServerLive(pb.ServerLiveRequest(), timeout=0.1),
            "ServerReady": lambda: stub.ServerReady(pb.ServerReadyRequest(), timeout=0.1),
            "ServerMetadata": lambda: stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=0.1),
            "ModelReady": lambda: stub.ModelReady(pb.ModelReadyRequest(name="fraud"), timeout=0.1),
            "ModelMetadata": lambda: stub.ModelMetadata(
                pb.ModelMetadataRequest(name="fraud"), timeout=0.1
            ),
            "ModelConfig": lambda: stub.ModelConfig(
                pb.ModelConfigRequest(name="fraud"), timeout=0.1
            ),
            "ModelStatistics": lambda: stub.ModelStatistics(
                pb.ModelStatisticsRequest(name="fraud"), timeout=0.1
            ),
            "RepositoryIndex": lambda: stub.RepositoryIndex(
                pb.RepositoryIndexRequest(), timeout=0.1
            ),
            "RepositoryModelLoad": lambda: stub.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name="fraud"), timeout=0.1
            ),
            "ModelInfer": lambda: stub.ModelInfer(infer_request(), timeout=0.1),
        }
        await stub.ModelInfer(infer_request(), timeout=10)  # connections are up before
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            codes = {}
            for name, call in calls.items():
                try:
                    await call()
                    codes[name] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    codes[name] = exc.code()
            assert all(code in ENDED for code in codes.values()), codes
            # Health and liveness are the gateway's own: a stalled backend never fails them.
            assert codes["health Check"] == codes["ServerLive"] == grpc.StatusCode.OK, codes
            assert codes["ModelInfer"] != grpc.StatusCode.OK, codes  # the backend really stalled

            # Without a client deadline the edge's default (2 s) bounds them as well.
            unbounded = [
                stub.ModelMetadata(pb.ModelMetadataRequest(name="fraud")),
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="fraud")),
                stub.ModelInfer(infer_request()),
            ]
            ended = await asyncio.wait_for(
                asyncio.gather(*unbounded, return_exceptions=True), timeout=20
            )
            for outcome in ended:
                code = outcome.code() if isinstance(outcome, grpc.aio.AioRpcError) else None
                assert code in ENDED or not isinstance(outcome, BaseException), outcome

            async def nothing_hangs() -> None:
                assert not in_flight(suite), in_flight(suite)

            # Still stopped: the gateway let go of every call on its own deadline.
            await eventually(nothing_hangs, timeout=5)
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)

        async def serving() -> None:
            await stub.ModelInfer(infer_request(), timeout=5)

        await eventually(serving, timeout=30)
