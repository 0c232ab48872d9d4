"""A fake gateway at the gRPC boundary: a V2 servicer that records what it saw, answers
OUTPUT0 = row sums for INPUT0 FP32 [-1, 4], and fails by event id on purpose:
``unavailable-*`` always UNAVAILABLE, ``flaky-*`` UNAVAILABLE twice then OK, ``bad-*``
INVALID_ARGUMENT. While ``gate`` is clear every call waits (a slow gateway)."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import numpy as np

from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import decode_inputs, encode_outputs


class FakeGateway(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.keys: dict[str, str] = {}
        self.active = 0
        self.max_active = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        reply = pb.ModelMetadataResponse(name=request.name, versions=["1"], platform="fake")
        reply.inputs.add(name="INPUT0", datatype="FP32", shape=[-1, 4])
        reply.outputs.add(name="OUTPUT0", datatype="FP32", shape=[-1, 1])
        return reply

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        self.calls[request.id] += 1
        key = request.parameters.get("routing_key")
        self.keys[request.id] = key.string_param if key is not None else ""
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.gate.wait()
            if request.id.startswith("unavailable-") or (
                request.id.startswith("flaky-") and self.calls[request.id] <= 2
            ):
                await context.abort(grpc.StatusCode.UNAVAILABLE, "no worker can serve")
            if request.id.startswith("bad-"):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "input INPUT0: bad")
            x = decode_inputs(request)["INPUT0"]
            reply = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
            encode_outputs(reply, {"OUTPUT0": x.sum(axis=1, keepdims=True).astype(np.float32)})
            return reply
        finally:
            self.active -= 1


async def start_fake_gateway() -> tuple[grpc.aio.Server, FakeGateway, str]:
    server = grpc.aio.server()
    fake = FakeGateway()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, fake, f"127.0.0.1:{port}"
