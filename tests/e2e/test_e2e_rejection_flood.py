"""T08, trimmed for the default run: a flood of malformed and oversized requests at the gateway
is refused, every one with its documented status, while the gateway's memory stays flat and a
valid caller is still answered throughout (the case's p99 bound is for bench/, not a test)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import encode_inputs

FLOOD = 2000


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def bad_requests() -> list[tuple[pb.ModelInferRequest, grpc.StatusCode]]:
    wrong_dtype = pb.ModelInferRequest(model_name="fraud")
    encode_inputs(wrong_dtype, {"transaction": np.zeros((1, 8), np.float64)})
    lying_shape = pb.ModelInferRequest(model_name="fraud")
    lying_shape.inputs.add(name="transaction", datatype="FP32", shape=[1, 8])
    lying_shape.raw_input_contents.append(b"\0" * 40)  # 40 bytes for 32
    huge_dims = pb.ModelInferRequest(model_name="fraud")
    huge_dims.inputs.add(name="transaction", datatype="FP32", shape=[1 << 20, 1 << 20])
    huge_dims.raw_input_contents.append(b"\0" * 32)
    unknown = pb.ModelInferRequest(model_name="no_such_model")
    encode_inputs(unknown, {"x": np.zeros((1, 1), np.float32)})
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    return [
        (wrong_dtype, invalid),
        (lying_shape, invalid),
        (huge_dims, invalid),
        (unknown, grpc.StatusCode.NOT_FOUND),
    ]


async def test_a_flood_of_bad_requests_is_refused_and_costs_no_memory(suite: Suite) -> None:
    gateway_pid = suite.processes["gateway"].process.pid
    cases = bad_requests()
    good = pb.ModelInferRequest(model_name="fraud")
    encode_inputs(good, {"transaction": np.zeros((1, 8), np.float32)})
    oversized = pb.ModelInferRequest(model_name="fraud")
    oversized.inputs.add(name="transaction", datatype="FP32", shape=[1, 8])
    oversized.raw_input_contents.append(b"\0" * (20 << 20))  # over the 16 MiB receive limit
    wrong: Counter[str] = Counter()
    answered = 0
    async with grpc.aio.insecure_channel(
        suite.address("gateway"), options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def send(n: int) -> None:
            request, expected = cases[n % len(cases)]
            try:
                await stub.ModelInfer(request, timeout=10)
                wrong["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                if exc.code() != expected:
                    wrong[exc.code().name] += 1

        async def valid_caller(stop: asyncio.Event) -> None:
            nonlocal answered
            while not stop.is_set():
                await stub.ModelInfer(good, timeout=10)
                answered += 1
                await asyncio.sleep(0.01)

        for n in range(200):  # warm-up: allocations of the first rejections settle
            await send(n)
        before = rss_mib(gateway_pid)
        stop = asyncio.Event()
        caller = asyncio.create_task(valid_caller(stop))
        for start in range(0, FLOOD, 50):
            await asyncio.gather(*(send(n) for n in range(start, start + 50)))
        for _ in range(5):  # oversized: refused before the handler runs
            try:
                await stub.ModelInfer(oversized, timeout=10)
                wrong["OK oversized"] += 1
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    wrong[f"oversized {exc.code().name}"] += 1
        stop.set()
        await caller
        after = rss_mib(gateway_pid)
    assert not wrong, wrong  # every refusal had its documented status
    assert answered > 10  # the valid caller was served all along
    assert after - before <= 16, (before, after)  # MiB, the case's bound
