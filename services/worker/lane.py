"""The worker's end of the gateway's stream lane (``WorkerLane.Open``, worker.proto).

A gateway's direct lane may send its ModelInfer calls as messages of one long-lived stream
(``gateway/stream_lane.py``): a unary RPC costs grpc.aio far more CPU than a stream message
(DESIGN.md, Performance). Each message here runs through the worker's ModelInfer behaviour
exactly as a unary call does — the same wrapped chain (RPC metrics, admission, auth, spans,
error mapping) around the same V2 servicer — with a per-message context standing in for the
call's: the stream's metadata plus the message's own headers, the message's deadline. So a
message is counted, admitted, refused and answered as a unary ModelInfer would be, and the
reply carries the status code the unary call would have ended with.

Messages run concurrently and are answered by id, in completion order. A message past its
deadline is cancelled here (as gRPC cancels an expired unary handler), so is one the gateway
cancels; a stream that ends or breaks cancels what it still runs. At drain the lane answers
new messages UNAVAILABLE (the gateway retries them on another worker), lets the running ones
finish, and ends its streams, so the server's grace is never spent waiting on an idle stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import grpc
from grpc import aio

from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)

ModelInfer = Callable[[pb.ModelInferRequest, Any], Awaitable[pb.ModelInferResponse]]
_END = object()  # the reply queue's last item


class MessageContext:
    """What the ModelInfer behaviours read of a servicer context, for one lane message."""

    __slots__ = ("_code", "_deadline", "_details", "_metadata", "_stream")

    def __init__(
        self,
        stream: aio.ServicerContext,
        metadata: tuple[tuple[str, str], ...],
        deadline: float | None,
    ) -> None:
        self._stream = stream
        self._metadata = metadata
        self._deadline = deadline
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        self._code, self._details = code, details
        raise aio.AbortError(details)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def auth_context(self) -> Any:
        return self._stream.auth_context()

    def peer(self) -> str:
        return str(self._stream.peer())


class _Stream:
    """One open lane stream: the messages it runs and the replies it owes."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.running: dict[int, asyncio.Task[None]] = {}
        self.ending = False  # no new messages: end once nothing runs

    def end(self) -> None:
        self.ending = True
        if not self.running:
            self.replies.put_nowait(_END)

    def settle(
        self, message_id: int, expiry: asyncio.TimerHandle | None, task: asyncio.Task[None]
    ) -> None:
        if expiry is not None:
            expiry.cancel()
        if self.running.get(message_id) is task:
            del self.running[message_id]
        if self.ending and not self.running:
            self.replies.put_nowait(_END)


class WorkerLaneServicer(worker_pb2_grpc.WorkerLaneServicer):
    def __init__(self, model_infer: ModelInfer) -> None:
        self._model_infer = model_infer  # the wrapped unary behaviour (see module docstring)
        self._draining = False
        self._streams: set[_Stream] = set()
        self.messages = 0  # messages taken (for tests)

    def drain(self) -> None:
        """Answer new messages UNAVAILABLE; end each stream once what it runs is done."""
        self._draining = True
        for stream in self._streams:
            stream.end()

    async def Open(
        self,
        request_iterator: AsyncIterator[worker_pb2.LaneRequest],
        context: aio.ServicerContext,
    ) -> AsyncIterator[worker_pb2.LaneReply]:
        stream = _Stream()
        self._streams.add(stream)
        if self._draining:
            stream.end()
        reader = asyncio.get_running_loop().create_task(
            self._read(request_iterator, context, stream)
        )
        try:
            while True:
                reply = await stream.replies.get()
                if reply is _END:
                    if stream.running:
                        continue  # queued before the last ones started: not the end yet
                    return
                yield reply
        finally:
            self._streams.discard(stream)
            reader.cancel()
            for task in list(stream.running.values()):
                task.cancel()

    async def _read(
        self,
        request_iterator: AsyncIterator[worker_pb2.LaneRequest],
        context: aio.ServicerContext,
        stream: _Stream,
    ) -> None:
        loop = asyncio.get_running_loop()
        stream_metadata = tuple(
            (k, v) for k, v in context.invocation_metadata() or () if isinstance(v, str)
        )
        replies, running = stream.replies, stream.running
        try:
            async for message in request_iterator:
                message_id = message.id
                if message.cancel:
                    task = running.get(message_id)
                    if task is not None:
                        task.cancel()
                    continue
                if self._draining:
                    replies.put_nowait(_refusal(message_id, _UNAVAILABLE, "worker is draining"))
                    continue
                if message_id in running:
                    text = f"lane id {message_id} in use"
                    replies.put_nowait(_refusal(message_id, _INVALID, text))
                    continue
                self.messages += 1
                timeout = message.timeout_seconds
                deadline = time.monotonic() + timeout if timeout > 0 else None
                headers = tuple((h.key, h.value) for h in message.metadata)
                message_context = MessageContext(context, stream_metadata + headers, deadline)
                task = loop.create_task(self._run(message, message_context, replies))
                running[message_id] = task
                # gRPC cancels an expired unary handler; so does the lane (T09).
                expiry = loop.call_later(timeout, _expire, task) if deadline is not None else None
                task.add_done_callback(partial(stream.settle, message_id, expiry))
        except Exception as exc:  # the stream broke: what runs is cancelled with it
            log.debug("lane stream from %s ended: %s", context.peer(), exc)
        stream.end()  # the gateway is done writing

    async def _run(
        self,
        message: worker_pb2.LaneRequest,
        context: MessageContext,
        replies: asyncio.Queue[Any],
    ) -> None:
        reply = worker_pb2.LaneReply(id=message.id)
        try:
            reply.response.CopyFrom(await self._model_infer(message.request, context))
        except aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            reply.code, reply.message = code.value[0], context.details()
        except Exception:  # the behaviours map every error; this is the last guard
            log.exception("lane message %d failed", message.id)
            reply.code, reply.message = grpc.StatusCode.INTERNAL.value[0], "internal error"
        replies.put_nowait(reply)


_UNAVAILABLE, _INVALID = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT


def _refusal(message_id: int, code: grpc.StatusCode, text: str) -> worker_pb2.LaneReply:
    return worker_pb2.LaneReply(id=message_id, code=code.value[0], message=text)


def _expire(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()
