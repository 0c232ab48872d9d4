"""The transport floor: a grpc.aio server (uvloop, like the services) whose ModelInfer does
nothing but return a fixed reply, bytes in and bytes out. Driven by the same client as the
suite, it shows what one Python gRPC process costs per request on this machine before any of
our code runs. Prints its port on stdout, then serves until terminated."""

from __future__ import annotations

import asyncio

import grpc
import uvloop

from modelserve.proto.inference import grpc_service_pb2 as pb

REPLY = pb.ModelInferResponse(
    model_name="echo",
    model_version="1",
    outputs=[pb.ModelInferResponse.InferOutputTensor(name="OUTPUT0", datatype="FP32", shape=[1])],
    raw_output_contents=[b"\0\0\0\0"],
).SerializeToString()


async def _infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return REPLY


async def _serve() -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(_infer)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve())
