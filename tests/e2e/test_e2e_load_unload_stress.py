"""T24, trimmed for the default run: concurrent RepositoryModelLoad/Unload loops on one model
while callers infer it. Only documented statuses come back (OK; UNAVAILABLE "unloaded" while it
is out; DEADLINE_EXCEEDED from a load that is overtaken by an unload), nothing crashes, and at
the end, loaded once more, the registry, the gateway and the worker agree: READY and serving."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import Suite
from modelserve.cli.up import wait_models_ready
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc
from modelserve.tensors import encode_inputs

MODEL = "stress_load"
LOOPS = 8
SECONDS = 8.0
ALLOWED = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}


async def test_concurrent_load_unload_with_traffic_ends_consistent(
    suite: Suite, demo_dir: Path
) -> None:
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        await push_version(
            registry_pb2_grpc.RegistryStub(channel), MODEL, demo_dir / "fraud_v1.onnx"
        )
    await wait_models_ready(suite.address("gateway"), [MODEL], timeout=120)
    outcomes: Counter[str] = Counter()
    messages: set[str] = set()
    stop_at = time.monotonic() + SECONDS

    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def flipper(index: int) -> None:
            while time.monotonic() < stop_at:
                try:
                    if index % 2:
                        await stub.RepositoryModelUnload(
                            pb.RepositoryModelUnloadRequest(model_name=MODEL), timeout=5
                        )
                    else:
                        await stub.RepositoryModelLoad(
                            pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=2
                        )
                    outcomes["admin OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    outcomes[f"admin {exc.code().name}"] += 1
                    messages.add(f"{exc.code().name}: {exc.details()}")

        async def caller() -> None:
            request = pb.ModelInferRequest(model_name=MODEL)
            encode_inputs(request, {"transaction": np.zeros((1, 8), np.float32)})
            while time.monotonic() < stop_at:
                try:
                    await stub.ModelInfer(request, timeout=5)
                    outcomes["infer OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    outcomes[f"infer {exc.code().name}"] += 1
                    messages.add(f"{exc.code().name}: {exc.details()}")
                await asyncio.sleep(0.005)

        await asyncio.gather(*(flipper(i) for i in range(LOOPS)), *(caller() for _ in range(4)))
        codes = {key.split(" ", 1)[1] for key in outcomes}
        assert codes <= ALLOWED, (outcomes, messages)
        assert outcomes["admin OK"] > LOOPS, outcomes  # the loops did flip it
        # Every refusal says why, in words a caller can act on: unloaded (and how to load),
        # loading again (no worker holds it yet), or a load overtaken by an unload.
        known = ("is unloaded", "no serving worker holds", "not READY", "deadline")
        for message in messages:
            assert any(k.lower() in message.lower() for k in known), message
        # Settle: one last load; then every layer agrees.
        await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=60)
        ready = await stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=5)
        assert ready.ready
        request = pb.ModelInferRequest(model_name=MODEL)
        encode_inputs(request, {"transaction": np.zeros((1, 8), np.float32)})
        await stub.ModelInfer(request, timeout=10)
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        model = await registry_pb2_grpc.RegistryStub(channel).GetModel(
            registry_pb2.GetModelRequest(name=MODEL), timeout=5
        )
    assert not model.unloaded
    async with grpc.aio.insecure_channel(suite.address("worker")) as channel:
        worker = pb_grpc.GRPCInferenceServiceStub(channel)
        assert (await worker.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=5)).ready
