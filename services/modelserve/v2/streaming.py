"""ModelStreamInfer on top of a unary infer: each request answered in order.

As in Triton, a failed request does not end the stream: its answer carries ``error_message``
and the stream goes on. Requests are handled one at a time, so a stream never buffers more
than one response (bounded by construction).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from modelserve.errors import ModelServeError
from modelserve.proto.inference import grpc_service_pb2 as pb

log = logging.getLogger(__name__)
Infer = Callable[[pb.ModelInferRequest], Awaitable[pb.ModelInferResponse]]


async def stream_infer(
    requests: AsyncIterator[pb.ModelInferRequest],
    infer: Infer,
    idle_timeout_s: float | None = None,
) -> AsyncIterator[pb.ModelStreamInferResponse]:
    """Answer each request of ``requests`` in order; end the stream (OK) once the client has
    sent nothing for ``idle_timeout_s``, so idle streams cannot hold a server's stream slots."""
    iterator = aiter(requests)
    while True:
        try:
            async with asyncio.timeout(idle_timeout_s):
                request = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            log.info("ended a ModelStreamInfer stream idle for %.0f s", idle_timeout_s or 0)
            return
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
