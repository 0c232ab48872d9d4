"""stream_infer on a real grpc.aio server: a failed request is answered in-band and the stream
goes on, answers come in request order, an unexpected error still ends the stream cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio

from modelserve.errors import InvalidArgumentError, NotFoundError
from modelserve.interceptors import ErrorInterceptor
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.v2.streaming import stream_infer


class Inference(pb_grpc.GRPCInferenceServiceServicer):
    """ModelInfer fails for the models "missing", "bad" and "crash"; others answer slower the
    earlier they come, so a stream that answered as results finish would reorder them."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        self.seen.append(request.id)
        if request.model_name == "missing":
            raise NotFoundError(f"unknown model '{request.model_name}'")
        if request.model_name == "bad":
            raise InvalidArgumentError("input 'x': expected FP32, got INT64")
        if request.model_name == "crash":
            raise RuntimeError("segfault in /srv/ort.so")
        await asyncio.sleep(0.002 * (10 - len(self.seen) % 10))
        return pb.ModelInferResponse(
            model_name=request.model_name, model_version="1", id=request.id
        )

    def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        return stream_infer(request_iterator, lambda r: self.ModelInfer(r, context))


@pytest.fixture
async def stub() -> AsyncIterator[tuple[Inference, pb_grpc.GRPCInferenceServiceStub]]:
    servicer = Inference()  # type: ignore[abstract]  # only the infer RPCs are needed
    server = aio.server(interceptors=[ErrorInterceptor()])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield servicer, pb_grpc.GRPCInferenceServiceStub(channel)
    await server.stop(0)


def requests(*models: str) -> list[pb.ModelInferRequest]:
    return [
        pb.ModelInferRequest(model_name=m, model_version="7", id=f"r{i}")
        for i, m in enumerate(models)
    ]


async def collect(
    stub: pb_grpc.GRPCInferenceServiceStub, sent: list[pb.ModelInferRequest]
) -> list[pb.ModelStreamInferResponse]:
    call = stub.ModelStreamInfer(iter(sent), timeout=20)
    return [response async for response in call]


async def test_answers_come_in_request_order(
    stub: tuple[Inference, pb_grpc.GRPCInferenceServiceStub],
) -> None:
    sent = requests(*["fraud"] * 8)
    answers = await collect(stub[1], sent)
    assert [a.infer_response.id for a in answers] == [r.id for r in sent]
    assert all(a.error_message == "" for a in answers)


async def test_errors_are_in_band_and_the_stream_goes_on(
    stub: tuple[Inference, pb_grpc.GRPCInferenceServiceStub],
) -> None:
    sent = requests("fraud", "missing", "fraud", "bad", "fraud")
    answers = await collect(stub[1], sent)
    assert [a.infer_response.id for a in answers] == ["r0", "r1", "r2", "r3", "r4"]
    assert [a.error_message for a in answers] == [
        "",
        "NOT_FOUND: unknown model 'missing'",
        "",
        "INVALID_ARGUMENT: input 'x': expected FP32, got INT64",
        "",
    ]
    failed = answers[1].infer_response
    assert (failed.model_name, failed.model_version) == ("missing", "7")  # says which request
    assert answers[4].infer_response.model_version == "1"  # a real answer after two failures


async def test_an_unexpected_error_ends_the_stream_with_internal(
    stub: tuple[Inference, pb_grpc.GRPCInferenceServiceStub],
) -> None:
    servicer, client = stub
    call = client.ModelStreamInfer(iter(requests("fraud", "crash", "fraud")), timeout=20)
    answers: list[pb.ModelStreamInferResponse] = []
    with pytest.raises(aio.AioRpcError) as info:
        async for response in call:
            answers.append(response)
    assert [a.infer_response.id for a in answers] == ["r0"]
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "/srv" not in (info.value.details() or "")
    assert servicer.seen == ["r0", "r1"]  # nothing after the crash was handled


async def test_an_idle_stream_is_ended_after_the_idle_timeout() -> None:
    """A stream that sends one request and then nothing is answered, then ended (OK) once
    idle_timeout_s passes, so idle streams cannot hold a server's stream slots."""
    answered: list[str] = []
    forever = asyncio.Event()

    async def infer(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        answered.append(request.id)
        return pb.ModelInferResponse(model_name=request.model_name, id=request.id)

    async def one_then_silence() -> AsyncIterator[pb.ModelInferRequest]:
        yield pb.ModelInferRequest(model_name="m", id="only")
        await forever.wait()

    replies = [r async for r in stream_infer(one_then_silence(), infer, idle_timeout_s=0.2)]
    assert [r.infer_response.id for r in replies] == ["only"] and answered == ["only"]
