"""SIGTERM to a worker in the middle of a stream of requests loses none of them: the worker
tells routers it is draining, finishes what it accepted, and the router sends the rest to the
other worker."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from suitesupport import dump_logs, ready_suite

from modelserve.cli.suite import Suite, start_suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import decode_outputs, encode_inputs


@pytest.fixture(scope="module")
def two_worker_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    running = start_suite(tmp_path_factory.mktemp("drain"), workers=2)
    try:
        asyncio.run(ready_suite(running))
        yield running
    except BaseException:
        print(dump_logs(running))
        raise
    finally:
        running.stop(timeout=20)


async def worker_served(suite: Suite, name: str) -> int:
    async with grpc.aio.insecure_channel(suite.address(name)) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stats = await stub.ModelStatistics(pb.ModelStatisticsRequest(name="fraud"), timeout=5)
        return sum(s.inference_count for s in stats.model_stats)


async def test_sigterm_worker_mid_stream_loses_no_request(two_worker_suite: Suite) -> None:
    suite = two_worker_suite
    rows = np.ones((1, 8), dtype=np.float32)
    results: list[str] = []
    fifty_done = asyncio.Event()
    stop_at = time.monotonic() + 3.0
    victim = suite.processes["worker"]

    async def client(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        while time.monotonic() < stop_at:
            request = pb.ModelInferRequest(model_name="fraud")
            encode_inputs(request, {"transaction": rows})
            try:
                response = await stub.ModelInfer(request, timeout=10)
                assert decode_outputs(response)["fraud_probability"].shape == (1, 1)
                results.append("ok")
                if len(results) >= 50:
                    fifty_done.set()
            except grpc.RpcError as exc:
                results.append(f"{exc.code().name}: {exc.details()}")

    async def terminate_victim() -> None:
        await fifty_done.wait()  # mid-stream: both workers have been taking requests
        assert await worker_served(suite, "worker") > 0
        victim.process.send_signal(signal.SIGTERM)

    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await asyncio.gather(terminate_victim(), *(client(stub) for _ in range(8)))

    exit_code = await asyncio.to_thread(victim.process.wait, 40)
    failures = [r for r in results if r != "ok"]
    assert not failures, f"{len(failures)} of {len(results)} failed: {failures[:5]}"
    assert exit_code == 0, dump_logs(suite)
    assert len(results) > 100
    assert await worker_served(suite, "worker1") > 0
    log = await asyncio.to_thread(Path(victim.log_path).read_text)
    assert "draining" in log and "stopped" in log
