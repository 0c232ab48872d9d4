"""Moving the production label changes which version answers, with no restart."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
from testsupport import eventually

from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc
from modelserve.tensors import decode_outputs, encode_inputs

ROWS = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)


async def infer(gateway: pb_grpc.GRPCInferenceServiceStub) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name="fraud")
    encode_inputs(request, {"transaction": ROWS})
    return await gateway.ModelInfer(request, timeout=10)


async def set_label(suite: Suite, version: int) -> None:
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        await stub.SetLabel(
            registry_pb2.SetLabelRequest(model="fraud", label="production", version=version),
            timeout=10,
        )


async def test_moving_production_label_switches_version(
    suite: Suite, gateway: pb_grpc.GRPCInferenceServiceStub, demo_dir: Path
) -> None:
    before = await infer(gateway)
    assert before.model_version == "1"
    try:
        await set_label(suite, 2)

        async def answered_by_v2() -> pb.ModelInferResponse:
            response = await infer(gateway)
            assert response.model_version == "2"
            return response

        after = await eventually(answered_by_v2)
        v1 = decode_outputs(before)["fraud_probability"]
        v2 = decode_outputs(after)["fraud_probability"]
        assert not np.allclose(v1, v2), "the two versions should answer differently"
    finally:
        await set_label(suite, 1)
