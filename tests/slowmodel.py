"""A model that really takes seconds (ORT's terminate bites between its loop's nodes), and the
fixture helper that pushes it to a running suite and waits until the gateway says READY."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from testsupport import eventually

from modelserve.cli.demo_models import IR_VERSION, OPSET
from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc

WIDTH = 256


def slow_model(iterations: int) -> onnx.ModelProto:
    """y = x; repeat ``iterations`` times: y = tanh(tile(y) @ W)[:rows]: a few ms a turn on a
    wide matrix, so one run lasts seconds and ORT's terminate (checked between nodes) bites."""
    body = helper.make_graph(
        [
            helper.make_node("Tile", ["y_in", "reps"], ["wide"]),
            helper.make_node("MatMul", ["wide", "w"], ["m"]),
            helper.make_node("Tanh", ["m"], ["t"]),
            helper.make_node("Slice", ["t", "zero", "rows", "zero"], ["y_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("y_in", TensorProto.FLOAT, ["batch", WIDTH]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("y_out", TensorProto.FLOAT, ["batch", WIDTH]),
        ],
        [
            numpy_helper.from_array(np.array([512, 1], np.int64), "reps"),
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(
                np.random.default_rng(0).standard_normal((WIDTH, WIDTH)).astype(np.float32) / 16,
                "w",
            ),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Slice", ["shape", "zero", "one"], ["rows"]),
            helper.make_node("Loop", ["trips", "true", "x"], ["y"], body=body),
        ],
        "slow_loop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [
            numpy_helper.from_array(np.array(iterations, np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "true"),
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


@functools.cache
def iterations_for(seconds: float) -> int:
    """How many turns make one run last about ``seconds`` on this machine: CI boxes differ by
    more than 2x from this one (2,000 turns took 0.74 s there and 2.5 s here), so the count is
    measured, not fixed. Measured once per process on a 200-turn model, best of three."""
    import onnxruntime as ort

    probe = ort.InferenceSession(
        slow_model(200).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feed = {"x": np.ones((1, WIDTH), np.float32)}
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        probe.run(None, feed)
        best = min(best, time.perf_counter() - started)
    return max(200, int(200 * seconds / max(best, 1e-6)))


async def push_slow(suite: Suite, name: str, path: Path, seconds: float = 3.0) -> str:
    """Push a model whose one run lasts about ``seconds`` as ``name`` with one instance and
    batch size 1 (a second call waits in the queue behind a running one) and wait until the
    gateway says READY."""
    onnx.save(slow_model(iterations_for(seconds)), path)
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        await push_version(
            registry_pb2_grpc.RegistryStub(channel),
            name,
            path,
            labels=["production"],
            config=registry_pb2.ServingConfig(
                max_batch_size=1, instance_count=1, warmup_iterations=1, max_queue_size=8
            ),
        )
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def ready() -> None:
            assert (await stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=5)).ready

        await eventually(ready, timeout=180)
    return name
