"""ModelStreamInfer on top of a unary infer: each request answered in order.

As in Triton, a failed request does not end the stream: its answer carries ``error_message``
and the stream goes on. Requests are handled one at a time, so a stream never buffers more
than one response (bounded by construction).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from modelserve.errors import ModelServeError
from modelserve.proto.inference import grpc_service_pb2 as pb

Infer = Callable[[pb.ModelInferRequest], Awaitable[pb.ModelInferResponse]]


async def stream_infer(
    requests: AsyncIterator[pb.ModelInferRequest], infer: Infer
) -> AsyncIterator[pb.ModelStreamInferResponse]:
    async for request in requests:
        try:
            response = await infer(request)
        except ModelServeError as exc:
            yield pb.ModelStreamInferResponse(
                error_message=f"{exc.code.name}: {exc.message}",
                infer_response=pb.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id,
                ),
            )
            continue
        yield pb.ModelStreamInferResponse(infer_response=response)
