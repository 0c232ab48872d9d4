"""The stream lane (gateway/stream_lane.py against worker/lane.py) over a real grpc.aio server on
loopback: the worker's end wraps a stand-in ModelInfer with the real behaviours (RPC metrics,
admission, error mapping), as the worker's runtime does; the gateway's end is the sender
``calls.Hop`` calls in place of the unary stub. Each case is one a unary call has from gRPC:
statuses, deadlines, cancels, per-call metadata, a broken stream, drain, and an old worker
without the service."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc import aio

from gateway import stream_lane
from gateway.stream_lane import LaneError, StreamLanes
from modelserve.admission import AdmissionInterceptor
from modelserve.channels import Endpoint, internal_channel
from modelserve.errors import InvalidArgumentError
from modelserve.interceptors import ErrorInterceptor, wrap_behaviour
from modelserve.metrics import RpcMetricsInterceptor
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import worker_pb2_grpc
from worker.lane import WorkerLaneServicer

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
Send = Callable[..., Awaitable[pb.ModelInferResponse]]


@dataclass
class StandIn:
    """A ModelInfer: answers with the request's id after ``delays[id]`` seconds; an id in
    ``invalid`` is refused as a ModelServeError; records what each call saw."""

    delays: dict[str, float] = field(default_factory=dict)
    invalid: set[str] = field(default_factory=set)
    seen_metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    seen_remaining: dict[str, float | None] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    running: int = 0

    async def __call__(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        self.seen_metadata[request.id] = dict(context.invocation_metadata())
        self.seen_remaining[request.id] = context.time_remaining()
        if request.id in self.invalid:
            raise InvalidArgumentError(f"bad tensor in {request.id}")
        self.running += 1
        try:
            await asyncio.sleep(self.delays.get(request.id, 0.0))
        except asyncio.CancelledError:
            self.cancelled.append(request.id)
            raise
        finally:
            self.running -= 1
        return pb.ModelInferResponse(model_name=request.model_name, id=request.id)


class UnaryOnly(pb_grpc.GRPCInferenceServiceServicer):
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        return pb.ModelInferResponse(model_name=request.model_name, id=f"unary {request.id}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def start_worker(
    port: int, stand_in: StandIn, *, max_unary: int = 1000
) -> tuple[aio.Server, WorkerLaneServicer]:
    behaviours = (
        RpcMetricsInterceptor("lane-test"),
        AdmissionInterceptor(max_unary=max_unary, max_streams=100),
        ErrorInterceptor(),
    )
    lane = WorkerLaneServicer(wrap_behaviour(MODEL_INFER, stand_in, False, behaviours))
    server = aio.server()
    worker_pb2_grpc.add_WorkerLaneServicer_to_server(lane, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, lane


@asynccontextmanager
async def lanes_to(
    server: aio.Server, port: int
) -> AsyncIterator[tuple[StreamLanes, Send, Endpoint]]:
    """The gateway's end (lanes and a sender) for a test's own server on ``port``; all of it
    closed after, whatever server then listens there."""
    address = f"127.0.0.1:{port}"
    endpoint = Endpoint(address, internal_channel(address))
    lanes = StreamLanes()
    try:
        yield lanes, lanes.sender(endpoint), endpoint
    finally:
        await lanes.aclose()
        await endpoint.close()
        await server.stop(0)


@pytest.fixture
async def worker() -> AsyncIterator[tuple[Endpoint, StandIn, WorkerLaneServicer, aio.Server]]:
    port = free_port()
    stand_in = StandIn()
    server, lane = await start_worker(port, stand_in)
    address = f"127.0.0.1:{port}"
    endpoint = Endpoint(address, internal_channel(address))
    yield endpoint, stand_in, lane, server
    await endpoint.close()
    await server.stop(0)


async def until(check: Callable[[], bool], timeout: float = 2.0) -> None:
    """Await ``check()`` turning true (a state the other end reaches asynchronously)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def request(rid: str) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="m", model_version="1", id=rid)


async def test_calls_share_one_stream_and_are_answered_by_id_in_any_order(
    worker: tuple[Endpoint, StandIn, WorkerLaneServicer, aio.Server],
) -> None:
    endpoint, stand_in, lane, _ = worker
    lanes = StreamLanes()
    send: Send = lanes.sender(endpoint)
    stand_in.delays = {"slow": 0.3}
    slow = asyncio.create_task(send(request("slow"), timeout=5.0, metadata=[]))
    await asyncio.sleep(0.05)
    fast = await send(
        request("fast"), timeout=5.0, metadata=[("x-request-id", "rid-1"), ("traceparent", "t")]
    )
    assert fast.id == "fast" and not slow.done(), "the fast call is answered first"
    assert (await slow).id == "slow"
    assert lane.messages == 2 and len(lanes._streams) == 1  # one stream carried both
    # Per-call metadata reaches the worker's ModelInfer as a unary call's would, and the
    # deadline with it (the timeout less the time in transit).
    assert stand_in.seen_metadata["fast"]["x-request-id"] == "rid-1"
    assert stand_in.seen_metadata["fast"]["traceparent"] == "t"
    remaining = stand_in.seen_remaining["fast"]
    assert remaining is not None and 4.5 < remaining <= 5.0
    await lanes.aclose()


async def test_a_refused_call_fails_with_its_status_and_its_neighbours_do_not(
    worker: tuple[Endpoint, StandIn, WorkerLaneServicer, aio.Server],
) -> None:
    endpoint, stand_in, _, _ = worker
    lanes = StreamLanes()
    send: Send = lanes.sender(endpoint)
    stand_in.invalid = {"bad"}
    with pytest.raises(LaneError) as refused:
        await send(request("bad"), timeout=5.0, metadata=[])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "bad tensor in bad"
    assert (await send(request("good"), timeout=5.0, metadata=[])).id == "good"
    await lanes.aclose()


async def test_a_deadline_fails_the_call_at_once_and_stops_the_run_at_the_worker(
    worker: tuple[Endpoint, StandIn, WorkerLaneServicer, aio.Server],
) -> None:
    """T09 over the lane: DEADLINE_EXCEEDED on time, and the worker's run is cancelled."""
    endpoint, stand_in, _, _ = worker
    lanes = StreamLanes()
    send: Send = lanes.sender(endpoint)
    stand_in.delays = {"long": 5.0}
    started = time.monotonic()
    with pytest.raises(LaneError) as expired:
        await send(request("long"), timeout=0.2, metadata=[])
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.2 + 0.1
    await until(lambda: bool(stand_in.cancelled))
    assert stand_in.cancelled == ["long"] and stand_in.running == 0
    await lanes.aclose()


async def test_a_caller_that_leaves_cancels_the_run_at_the_worker(
    worker: tuple[Endpoint, StandIn, WorkerLaneServicer, aio.Server],
) -> None:
    """T12 over the lane: the cancel travels as a message for the call's id."""
    endpoint, stand_in, _, _ = worker
    lanes = StreamLanes()
    send: Send = lanes.sender(endpoint)
    stand_in.delays = {"left": 5.0}
    call = asyncio.create_task(send(request("left"), timeout=10.0, metadata=[]))
    await until(lambda: bool(stand_in.running))
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await until(lambda: bool(stand_in.cancelled))
    assert stand_in.cancelled == ["left"]
    assert (await send(request("after"), timeout=5.0, metadata=[])).id == "after"
    await lanes.aclose()


async def test_a_broken_stream_fails_its_calls_unavailable_and_the_next_call_reopens() -> None:
    """kill -9 of a worker (T30): what was on the stream fails UNAVAILABLE, which Hop retries
    elsewhere; once the worker is back, the next call opens a new stream."""
    port = free_port()
    stand_in = StandIn(delays={"inflight": 5.0})
    server, _ = await start_worker(port, stand_in)
    async with lanes_to(server, port) as (_, send, _endpoint):
        call = asyncio.create_task(send(request("inflight"), timeout=10.0, metadata=[]))
        await until(lambda: bool(stand_in.running))
        await server.stop(0)  # the connection goes with it
        with pytest.raises(LaneError) as broken:
            await call
        assert broken.value.code() == grpc.StatusCode.UNAVAILABLE
        restarted, _ = await start_worker(port, StandIn())
        try:
            answer = None
            for _ in range(50):  # the channel reconnects with backoff
                try:
                    answer = await send(request("again"), timeout=2.0, metadata=[])
                    break
                except LaneError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    await asyncio.sleep(0.1)
            assert answer is not None and answer.id == "again"
        finally:
            await restarted.stop(0)


async def test_a_draining_worker_finishes_what_it_runs_refuses_the_rest_and_ends_the_stream(
    worker: tuple[Endpoint, StandIn, WorkerLaneServicer, aio.Server],
) -> None:
    """T28 over the lane: in-flight calls finish OK; new ones are UNAVAILABLE (retried on
    another worker); the stream ends, so the server's grace is not spent on it."""
    endpoint, stand_in, lane, _ = worker
    lanes = StreamLanes()
    send: Send = lanes.sender(endpoint)
    stand_in.delays = {"running": 0.3}
    call = asyncio.create_task(send(request("running"), timeout=5.0, metadata=[]))
    await until(lambda: bool(stand_in.running))
    lane.drain()
    with pytest.raises(LaneError) as refused:
        await send(request("late"), timeout=5.0, metadata=[])
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (await call).id == "running"
    await until(lambda: bool(not lanes._streams))
    assert not lanes._streams, "the worker ended the stream once it was idle"
    await lanes.aclose()


async def test_admission_refuses_a_message_as_it_refuses_a_unary_call() -> None:
    port = free_port()
    stand_in = StandIn(delays={"first": 0.5})
    server, _ = await start_worker(port, stand_in, max_unary=1)
    async with lanes_to(server, port) as (_, send, _endpoint):
        first = asyncio.create_task(send(request("first"), timeout=5.0, metadata=[]))
        await until(lambda: bool(stand_in.running))
        with pytest.raises(LaneError) as busy:
            await send(request("second"), timeout=5.0, metadata=[])
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server busy" in busy.value.details()
        assert (await first).id == "first"


async def test_a_worker_without_the_lane_is_called_unary() -> None:
    """An older worker during a rolling upgrade: UNIMPLEMENTED for the stream, so the call
    (and every later one to it) goes unary, and nothing fails."""
    port = free_port()
    server = aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(UnaryOnly(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    async with lanes_to(server, port) as (lanes, send, endpoint):
        assert (await send(request("a"), timeout=5.0, metadata=[])).id == "unary a"
        assert (await send(request("b"), timeout=5.0, metadata=[])).id == "unary b"
        assert lanes.stream_for(endpoint) is None


async def test_an_old_stream_is_replaced_and_ends_after_its_last_answer(
    worker: tuple[Endpoint, StandIn, WorkerLaneServicer, aio.Server],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Streams are rotated (a fresh service token, the servers' connection age): a call on
    the old stream still gets its answer; new calls take the new stream."""
    endpoint, stand_in, _, _ = worker
    lanes = StreamLanes()
    send: Send = lanes.sender(endpoint)
    stand_in.delays = {"old": 0.3}
    old_call = asyncio.create_task(send(request("old"), timeout=5.0, metadata=[]))
    await asyncio.sleep(0.05)
    old = lanes._streams[endpoint.address]
    monkeypatch.setattr(stream_lane, "ROTATE_S", 0.0)
    assert (await send(request("new"), timeout=5.0, metadata=[])).id == "new"
    assert lanes._streams[endpoint.address] is not old and old.retiring
    assert (await old_call).id == "old"
    await until(lambda: bool(old.closed))
    assert old.closed, "the old stream ended once its last answer was in"
    await lanes.aclose()
