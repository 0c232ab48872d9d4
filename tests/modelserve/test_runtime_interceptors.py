"""ErrorInterceptor on a real grpc.aio server: domain errors become their status and message,
anything unexpected becomes INTERNAL with a reference id and no leaked text, in unary and
server-streaming RPCs alike."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio

from modelserve.errors import ModelServeError, NotFoundError, UnavailableError, error_for
from modelserve.interceptors import ErrorInterceptor
from modelserve.logging import GoneCallerFilter
from modelserve.proto.modelserve.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc

SECRET = "open /srv/models/ab12.onnx on db.internal:5432"
REF = re.compile(r"^internal error \(ref ([0-9a-f]{12})\)$")


def failure_for(kind: str) -> BaseException | None:
    return {
        "ok": None,
        "not_found": NotFoundError("unknown model 'zzz'"),
        "unavailable": UnavailableError("worker draining"),
        "bug": RuntimeError(SECRET),
        "keyerror": KeyError(SECRET),
        "relayed": error_for(grpc.StatusCode.INTERNAL, "worker failed (internal)"),
    }[kind]


class Control(router_pb2_grpc.RouterControlServicer):
    """Resolve fails as ``request.model`` says; ListWorkers is left unimplemented."""

    async def Resolve(
        self, request: router_pb2.ResolveRequest, context: aio.ServicerContext
    ) -> router_pb2.ResolveResponse:
        if request.model == "abort":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "aborted by the handler")
        failure = failure_for(request.model)
        if failure is not None:
            raise failure
        return router_pb2.ResolveResponse(model="ok", version=1)


class Status(worker_pb2_grpc.WorkerControlServicer):
    """WatchStatus sends two statuses, then fails with ``self.failure`` (or ends cleanly)."""

    failure: BaseException | None = None

    async def WatchStatus(
        self, request: worker_pb2.WatchStatusRequest, context: aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.WorkerStatus]:
        for sequence in (1, 2):
            yield worker_pb2.WorkerStatus(worker_id="w1", sequence=sequence)
        if self.failure is not None:
            raise self.failure


@pytest.fixture
async def server() -> AsyncIterator[tuple[Status, aio.Channel]]:
    status = Status()
    srv = aio.server(interceptors=[ErrorInterceptor()])
    control = Control()  # type: ignore[abstract]  # ListWorkers left unimplemented on purpose
    router_pb2_grpc.add_RouterControlServicer_to_server(control, srv)
    worker_pb2_grpc.add_WorkerControlServicer_to_server(status, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield status, channel
    await srv.stop(0)


async def resolve(channel: aio.Channel, kind: str) -> aio.AioRpcError:
    stub = router_pb2_grpc.RouterControlStub(channel)
    with pytest.raises(aio.AioRpcError) as info:
        await stub.Resolve(router_pb2.ResolveRequest(model=kind), timeout=10)
    return info.value


async def test_a_successful_call_is_untouched(server: tuple[Status, aio.Channel]) -> None:
    stub = router_pb2_grpc.RouterControlStub(server[1])
    reply = await stub.Resolve(router_pb2.ResolveRequest(model="ok"), timeout=10)
    assert reply.model == "ok" and reply.version == 1


@pytest.mark.parametrize(
    ("kind", "code", "message"),
    [
        ("not_found", grpc.StatusCode.NOT_FOUND, "unknown model 'zzz'"),
        ("unavailable", grpc.StatusCode.UNAVAILABLE, "worker draining"),
        ("abort", grpc.StatusCode.PERMISSION_DENIED, "aborted by the handler"),
    ],
)
async def test_domain_errors_become_their_status_and_message(
    server: tuple[Status, aio.Channel], kind: str, code: grpc.StatusCode, message: str
) -> None:
    error = await resolve(server[1], kind)
    assert error.code() == code
    assert error.details() == message


@pytest.mark.parametrize("kind", ["bug", "keyerror"])
async def test_unexpected_exceptions_become_internal_with_a_ref_and_no_leak(
    server: tuple[Status, aio.Channel], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="modelserve.interceptors"):
        error = await resolve(server[1], kind)
    assert error.code() == grpc.StatusCode.INTERNAL
    details = error.details() or ""
    match = REF.match(details)
    assert match, details
    for leaked in ("/srv", "db.internal", "RuntimeError", "KeyError", "Traceback"):
        assert leaked not in details
    # The stack goes to the log under the same ref, so an operator can find it.
    logged = [r for r in caplog.records if match.group(1) in r.getMessage()]
    assert len(logged) == 1
    assert "/modelserve.v1.RouterControl/Resolve" in logged[0].getMessage()
    assert logged[0].exc_info is not None and SECRET in str(logged[0].exc_info[1])


async def test_each_unexpected_error_gets_its_own_ref(server: tuple[Status, aio.Channel]) -> None:
    first = await resolve(server[1], "bug")
    second = await resolve(server[1], "bug")
    assert first.details() != second.details()


async def test_an_rpc_the_servicer_does_not_implement_is_unimplemented(
    server: tuple[Status, aio.Channel],
) -> None:
    stub = router_pb2_grpc.RouterControlStub(server[1])
    with pytest.raises(aio.AioRpcError) as info:
        await stub.ListWorkers(router_pb2.ListWorkersRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def read_stream(channel: aio.Channel) -> tuple[list[int], aio.AioRpcError | None]:
    stub = worker_pb2_grpc.WorkerControlStub(channel)
    call = stub.WatchStatus(worker_pb2.WatchStatusRequest(), timeout=10)
    sequences: list[int] = []
    try:
        async for status in call:
            sequences.append(status.sequence)
    except aio.AioRpcError as exc:
        return sequences, exc
    return sequences, None


async def test_a_stream_that_ends_cleanly_is_untouched(server: tuple[Status, aio.Channel]) -> None:
    sequences, error = await read_stream(server[1])
    assert sequences == [1, 2] and error is None


@pytest.mark.parametrize(
    ("failure", "code", "message"),
    [
        (NotFoundError("unknown model 'zzz'"), grpc.StatusCode.NOT_FOUND, "unknown model 'zzz'"),
        (ModelServeError("plain domain error"), grpc.StatusCode.INTERNAL, "plain domain error"),
    ],
)
async def test_domain_errors_in_a_stream_end_it_with_their_status(
    server: tuple[Status, aio.Channel],
    failure: ModelServeError,
    code: grpc.StatusCode,
    message: str,
) -> None:
    status, channel = server
    status.failure = failure
    sequences, error = await read_stream(channel)
    assert sequences == [1, 2]  # what was sent before the failure arrives
    assert error is not None
    assert error.code() == code and error.details() == message


async def test_unexpected_errors_in_a_stream_become_internal_with_a_ref(
    server: tuple[Status, aio.Channel],
) -> None:
    status, channel = server
    status.failure = RuntimeError(SECRET)
    sequences, error = await read_stream(channel)
    assert sequences == [1, 2]
    assert error is not None and error.code() == grpc.StatusCode.INTERNAL
    assert REF.match(error.details() or ""), error.details()
    assert "db.internal" not in (error.details() or "")


def test_responses_to_gone_callers_log_one_warning_per_interval() -> None:
    """grpc.aio's ExecuteBatchError traceback per response it could not send becomes at most
    one WARNING per interval, with the count; other records are untouched."""
    now = [100.0]
    gone = GoneCallerFilter(interval_s=10.0, clock=lambda: now[0])

    def record(message: str) -> logging.LogRecord:
        try:
            raise RuntimeError("execute_batch failed")
        except RuntimeError:
            exc = sys.exc_info()
        return logging.LogRecord("grpc._cython.cygrpc", logging.ERROR, "x", 1, message, (), exc)

    flood = "ExecuteBatchError raised in core by servicer method [/inference/ModelInfer]"
    first = record(flood)
    assert gone.filter(first) and first.levelno == logging.WARNING and first.exc_info is None
    kept = [gone.filter(record(flood)) for _ in range(50)]
    assert not any(kept)
    now[0] += 10.5
    later = record(flood)
    assert gone.filter(later) and later.getMessage().startswith("51 responses not sent")
    other = record("something else broke")
    assert gone.filter(other) and other.levelno == logging.ERROR and other.exc_info is not None


@pytest.mark.parametrize("kind", ["bug", "keyerror"])
async def test_an_internal_error_names_the_callers_request_id_and_nothing_else(
    server: tuple[Status, aio.Channel], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """T39: INTERNAL carries "internal error" and the caller's request id (plus the ref the
    stack is logged under), no path, host or exception; an id that is not a plain token (a
    newline, markup) is not echoed."""
    stub = router_pb2_grpc.RouterControlStub(server[1])
    with caplog.at_level(logging.ERROR, logger="modelserve.interceptors"):
        with pytest.raises(aio.AioRpcError) as info:
            await stub.Resolve(
                router_pb2.ResolveRequest(model=kind),
                metadata=(("x-request-id", "req-42.a"),),
                timeout=10,
            )
    assert info.value.code() == grpc.StatusCode.INTERNAL
    details = info.value.details() or ""
    match = re.fullmatch(r"internal error \(request-id req-42\.a, ref ([0-9a-f]{12})\)", details)
    assert match, details
    for leaked in ("/srv", "db.internal", "RuntimeError", "KeyError", "Traceback"):
        assert leaked not in details
    assert [r for r in caplog.records if "request-id req-42.a" in r.getMessage()]
    with pytest.raises(aio.AioRpcError) as info:
        await stub.Resolve(
            router_pb2.ResolveRequest(model=kind),
            metadata=(("x-request-id", "evil <b>x</b>"),),
            timeout=10,
        )
    assert REF.match(info.value.details() or ""), info.value.details()


async def test_an_internal_error_relayed_from_a_hop_gets_the_request_id_too(
    server: tuple[Status, aio.Channel],
) -> None:
    stub = router_pb2_grpc.RouterControlStub(server[1])
    with pytest.raises(aio.AioRpcError) as info:
        await stub.Resolve(
            router_pb2.ResolveRequest(model="relayed"),
            metadata=(("x-request-id", "req-7"),),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "worker failed (internal) (request-id req-7)"
