"""The direct lane's calls as messages of one long-lived stream per worker (``WorkerLane``).

A unary ModelInfer costs grpc.aio ~225 us of client CPU and ~300 us of server CPU on a 2-vCPU
box, a message pair on an open stream ~140 and ~120, and its round trip takes half the time
(bench/lane_probe.py). The direct lane (``gateway/direct.py``) sends every call it makes to a
worker through here when ``direct_lane_streams`` is on: ``sender(endpoint)`` stands in for the
unary stub method, with the same call shape (request, timeout, metadata) and the same failures
(``LaneError`` is a ``grpc.RpcError`` with the status the unary call would have ended with), so
``calls.Hop`` picks, retries, ejects and translates exactly as before.

What a unary call gets from gRPC, a lane message gets here:
- its deadline: the timeout travels in the message (the worker cancels the run when it
  passes, T09) and the gateway fails the call with DEADLINE_EXCEEDED on its own timer;
- cancellation: a caller that leaves sends a cancel message for its id (T12);
- metadata: x-request-id, the caller, the trace context travel per message; the service
  token once, when the stream opens (each message is authenticated with it at the worker);
- failure: a stream that breaks (kill -9, a connection reset) fails every call still on it
  with UNAVAILABLE, which Hop retries on another worker (inference is idempotent, T30); a
  worker that drains ends its streams after answering what it runs (T28).
Streams are replaced after ``ROTATE_S`` (the next message opens a new one, the old ends when
its last answer is in), so a rotated service token and the servers' connection age limit
(300 s, A9) never meet a stream in use. A worker without the service (an older version during
a rolling upgrade: UNIMPLEMENTED) is called unary from then on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from modelserve.auth.client import service_authorization
from modelserve.channels import Endpoint
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)

ROTATE_S = 60.0
MODEL_INFER = b"/inference.GRPCInferenceService/ModelInfer"
Send = Callable[..., Awaitable[pb.ModelInferResponse]]


class LaneError(grpc.RpcError):
    """A lane call's failure, shaped as a grpc.aio call's error (code, details)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def debug_error_string(self) -> str:
        return f"lane: {self._code.name}: {self._details}"


class _Unsupported(Exception):
    """The worker has no WorkerLane service: call it unary."""


_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _Stream:
    """One open WorkerLane.Open stream to one worker and the calls waiting on it.

    Callers never write themselves: a message goes into ``_outbox`` and one writer task sends
    them in order (gRPC allows one write at a time on a call), so a caller waits only on its
    answer, and its deadline holds even while a stalled worker's flow control blocks writes."""

    def __init__(self, endpoint: Endpoint, on_closed: Callable[[_Stream], None]) -> None:
        stub = endpoint.hot_stub(worker_pb2_grpc.WorkerLaneStub)
        authorization = service_authorization()
        self.address = endpoint.address
        self.call = stub.Open(metadata=[authorization] if authorization is not None else None)
        self.pending: dict[int, asyncio.Future[worker_pb2.LaneReply]] = {}
        self.opened = time.monotonic()
        self.closed = False
        self.retiring = False
        self._next_id = 0
        self._outbox: deque[worker_pb2.LaneRequest | None] = deque()  # None: done writing
        self._idle: asyncio.Future[None] | None = None  # the writer waits on it when idle
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._reader = self._loop.create_task(self._read())
        self._writer = self._loop.create_task(self._write())

    async def infer(
        self,
        request: pb.ModelInferRequest,
        timeout: float | None,
        metadata: Sequence[tuple[str, Any]],
    ) -> pb.ModelInferResponse:
        self._next_id += 1
        message_id = self._next_id
        future: asyncio.Future[worker_pb2.LaneReply] = self._loop.create_future()
        self.pending[message_id] = future
        message = worker_pb2.LaneRequest(id=message_id, request=request)
        if timeout is not None:
            message.timeout_seconds = max(timeout, 1e-6)
        for key, value in metadata:
            if key != "authorization" and isinstance(value, str):  # the stream carries it
                message.metadata.add(key=key, value=value)
        expiry = (
            self._loop.call_later(timeout, self._expire, message_id)
            if timeout is not None
            else None
        )
        self._send(message)
        try:
            reply = await future
        except asyncio.CancelledError:
            if self.pending.pop(message_id, None) is not None:
                self._send(worker_pb2.LaneRequest(id=message_id, cancel=True))
            raise
        finally:
            if expiry is not None:
                expiry.cancel()
            if self.retiring and not self.pending:
                self._send(None)
        if reply.code:
            raise LaneError(_CODES.get(reply.code, grpc.StatusCode.UNKNOWN), reply.message)
        return reply.response

    def _send(self, message: worker_pb2.LaneRequest | None) -> None:
        if self.closed:
            return
        self._outbox.append(message)
        idle = self._idle
        if idle is not None and not idle.done():
            idle.set_result(None)

    async def _write(self) -> None:
        outbox = self._outbox
        try:
            while True:
                while outbox:
                    message = outbox.popleft()
                    if message is None:
                        await self.call.done_writing()
                        return
                    await self.call.write(message)
                self._idle = self._loop.create_future()
                await self._idle
        except Exception as exc:  # the stream broke under a write: the reader fails the rest
            log.debug("lane write to %s failed: %s", self.address, exc)
            self.call.cancel()

    def _expire(self, message_id: int) -> None:
        future = self.pending.pop(message_id, None)
        if future is not None and not future.done():
            future.set_exception(LaneError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
            self._send(worker_pb2.LaneRequest(id=message_id, cancel=True))

    def retire(self) -> None:
        """No new calls; end the stream once the last answer is in."""
        self.retiring = True
        if not self.pending:
            self._send(None)

    async def _read(self) -> None:
        error: Exception = LaneError(grpc.StatusCode.UNAVAILABLE, "worker closed the lane")
        try:
            while True:
                reply = await self.call.read()
                if reply is grpc.aio.EOF:
                    break
                future = self.pending.pop(reply.id, None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            if code == grpc.StatusCode.UNIMPLEMENTED:
                error = _Unsupported()
            elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                error = LaneError(code, exc.details() or "")
            else:  # broken, reset, cancelled: each call may be retried elsewhere
                log.debug("lane to %s ended: %s", self.address, code)
        except asyncio.CancelledError:
            error = LaneError(grpc.StatusCode.CANCELLED, "gateway stopping")
            raise
        finally:
            self.closed = True
            self._writer.cancel()
            self._on_closed(self)
            pending, self.pending = self.pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(error)

    def close(self) -> None:
        self.call.cancel()


class StreamLanes:
    """The open lane streams of this gateway, one per worker address."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._unary_only: set[str] = set()

    def sender(self, endpoint: Endpoint) -> Send:
        """A stand-in for ``endpoint``'s unary ModelInfer stub method."""
        found = endpoint.hot_stubs.get(StreamLanes)
        if found is None:
            found = endpoint.hot_stubs[StreamLanes] = _Sender(self, endpoint)
        send: Send = found
        return send

    def stream_for(self, endpoint: Endpoint) -> _Stream | None:
        """The stream new calls to ``endpoint`` take (opened or replaced as needed), or None
        when the worker is called unary."""
        address = endpoint.address
        if address in self._unary_only:
            return None
        stream = self._streams.get(address)
        if stream is not None and not stream.closed:
            if time.monotonic() - stream.opened < ROTATE_S:
                return stream
            stream.retire()
        stream = self._streams[address] = _Stream(endpoint, self._closed)
        return stream

    def mark_unary(self, address: str) -> None:
        if address not in self._unary_only:
            log.warning("worker %s has no lane service; calling it unary", address)
        self._unary_only.add(address)

    def _closed(self, stream: _Stream) -> None:
        if self._streams.get(stream.address) is stream:
            del self._streams[stream.address]

    async def aclose(self) -> None:
        """Cancel every stream (the gateway stops: its calls have been drained)."""
        for stream in list(self._streams.values()):
            stream.close()
        self._streams.clear()


class _Sender:
    """Called as ``stub.ModelInfer(request, timeout=, metadata=)`` is (``calls.Hop``)."""

    _method = MODEL_INFER  # names the client span, as a unary stub method's does

    def __init__(self, lanes: StreamLanes, endpoint: Endpoint) -> None:
        self._lanes = lanes
        self._endpoint = endpoint

    async def __call__(
        self,
        request: pb.ModelInferRequest,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, Any]] = (),
    ) -> pb.ModelInferResponse:
        stream = self._lanes.stream_for(self._endpoint)
        if stream is not None:
            try:
                return await stream.infer(request, timeout, metadata)
            except _Unsupported:
                self._lanes.mark_unary(self._endpoint.address)
        unary = self._endpoint.hot_stub(pb_grpc.GRPCInferenceServiceStub).ModelInfer
        answer: pb.ModelInferResponse = await unary(request, timeout=timeout, metadata=metadata)
        return answer
