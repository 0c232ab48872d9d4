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
from testsupport import eventually

from modelserve.cli.suite import Suite, Supervisor, start_suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import router_pb2, router_pb2_grpc
from modelserve.tensors import decode_outputs, encode_inputs
from worker.settings import WorkerSettings


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
    signalled: list[float] = []

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
        signalled.append(time.monotonic())

    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await asyncio.gather(terminate_victim(), *(client(stub) for _ in range(8)))

    exit_code = await asyncio.to_thread(victim.process.wait, 40)
    # T28: exit <= drain + grace + 2 s (the worker's own settings; up passes none).
    settings = WorkerSettings()
    bound = settings.resolved_drain_seconds() + settings.shutdown_grace_seconds + 2
    assert time.monotonic() - signalled[0] <= bound, dump_logs(suite)
    failures = [r for r in results if r != "ok"]
    assert not failures, f"{len(failures)} of {len(results)} failed: {failures[:5]}"
    assert exit_code == 0, dump_logs(suite)
    assert len(results) > 100
    assert await worker_served(suite, "worker1") > 0
    log = await asyncio.to_thread(Path(victim.log_path).read_text)
    assert "draining" in log and "stopped" in log


async def routed_workers(suite: Suite) -> int:
    """Workers the router sends fraud to now (serving, fraud READY)."""
    async with grpc.aio.insecure_channel(suite.address("router")) as channel:
        stub = router_pb2_grpc.RouterControlStub(channel)
        reply = await stub.ListWorkers(router_pb2.ListWorkersRequest(), timeout=5)
    return sum(
        1
        for w in reply.workers
        if w.serving and any(v.startswith("fraud:") for v in w.ready_versions)
    )


async def test_a_killed_worker_is_restarted_and_the_suite_serves_on(
    two_worker_suite: Suite,
) -> None:
    """`modelserve up`'s supervisor: kill -9 of one of two workers under load costs no request
    (the router retries on the other) and the dead worker comes back on its port, routed to
    again once it reports its versions READY."""
    suite = two_worker_suite
    lines: list[str] = []
    supervisor = Supervisor(suite, say=lines.append)

    async def all_running() -> None:  # the worker the drain test stopped comes back first
        supervisor.check()
        assert all(p.process.poll() is None for p in suite.processes.values())
        assert await routed_workers(suite) == 2

    await eventually(all_running, timeout=60)
    victim = suite.processes["worker1"]
    restarts_before, port = victim.restarts, victim.port
    results: list[str] = []
    stop_at = time.monotonic() + 3.0

    async def client(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        while time.monotonic() < stop_at:
            request = pb.ModelInferRequest(model_name="fraud")
            encode_inputs(request, {"transaction": np.ones((1, 8), np.float32)})
            try:
                await stub.ModelInfer(request, timeout=10)
                results.append("ok")
            except grpc.RpcError as exc:
                results.append(f"{exc.code().name}: {exc.details()}")

    killed: list[float] = []

    async def kill_victim() -> None:
        await asyncio.sleep(0.5)
        victim.process.send_signal(signal.SIGKILL)
        killed.append(time.monotonic())

    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await asyncio.gather(kill_victim(), *(client(stub) for _ in range(4)))
    failures = [r for r in results if r != "ok"]
    assert not failures, f"{len(failures)} of {len(results)} failed: {failures[:5]}"

    async def back() -> None:
        supervisor.check()
        assert victim.restarts == restarts_before + 1 and victim.port == port
        assert await routed_workers(suite) == 2  # routed to again, fraud READY

    await eventually(back, timeout=60)
    # T30: the replacement serves (routed to, fraud READY) within 30 s of the kill.
    assert time.monotonic() - killed[0] <= 30, dump_logs(suite)
    assert any("worker1 exited with code -9" in line for line in lines), lines
    assert any("worker1 restarted" in line for line in lines), lines
