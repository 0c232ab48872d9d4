"""T07: the message-size boundary at the gateway and behind it. A request 1 KiB under the
gateway's receive limit is answered OK through gateway -> router -> worker (whatever the
gateway adds when it forwards), one 1 KiB over is RESOURCE_EXHAUSTED from gRPC before any
handler runs, and the internal servers (router, worker) take more than the gateway does, so
nothing accepted at the edge can be refused inside: the same over-the-limit request sent
straight to the router or to a worker is answered OK."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.settings import MIB
from modelserve.tensors import encode_inputs

LIMIT = 16 * MIB  # the gateway's max_receive_message_bytes (default)
KIB = 1024


def sized(total: int) -> pb.ModelInferRequest:
    """A valid fraud request padded with a string parameter to exactly ``total`` bytes."""
    request = pb.ModelInferRequest(model_name="fraud")
    encode_inputs(request, {"transaction": np.zeros((1, 8), np.float32)})
    request.parameters["padding"].string_param = ""
    base = request.ByteSize()
    # The string's length prefix grows by a few bytes with it: settle it in two steps.
    request.parameters["padding"].string_param = "x" * (total - base)
    request.parameters["padding"].string_param = "x" * (total - base - (request.ByteSize() - total))
    assert request.ByteSize() == total
    return request


async def infer(address: str, request: pb.ModelInferRequest) -> grpc.StatusCode:
    options = [("grpc.max_send_message_length", 64 * MIB)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        try:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_one_kib_under_the_limit_is_served_and_one_over_is_resource_exhausted(
    suite: Suite,
) -> None:
    gateway = suite.address("gateway")
    assert await infer(gateway, sized(LIMIT - KIB)) == grpc.StatusCode.OK
    assert await infer(gateway, sized(LIMIT + KIB)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await infer(gateway, sized(4 * KIB)) == grpc.StatusCode.OK  # still serving


@pytest.mark.parametrize("service", ["router", "worker"])
async def test_internal_hops_take_more_than_the_gateway(suite: Suite, service: str) -> None:
    request = sized(LIMIT + KIB)
    if service == "worker":
        request.model_version = "1"  # a worker serves explicit versions only
    assert await infer(suite.address(service), request) == grpc.StatusCode.OK
