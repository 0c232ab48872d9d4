"""from_rpc_error: a downstream status travels upstream with its code, while transport details
(addresses, peers, socket errors) are replaced by a short message naming the hop."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio

from modelserve import errors
from modelserve.errors import ModelServeError, from_rpc_error
from modelserve.interceptors import ErrorInterceptor
from modelserve.proto.modelserve.v1 import router_pb2, router_pb2_grpc


class Downstream(router_pb2_grpc.RouterControlServicer):
    """Resolve aborts with the status named in ``model`` and the text in ``version``."""

    async def Resolve(
        self, request: router_pb2.ResolveRequest, context: aio.ServicerContext
    ) -> router_pb2.ResolveResponse:
        await context.abort(grpc.StatusCode[request.model], request.version)
        raise AssertionError("abort returned")


class Upstream(router_pb2_grpc.RouterControlServicer):
    """Forwards Resolve to ``label`` (an address) and maps failures with from_rpc_error."""

    async def Resolve(
        self, request: router_pb2.ResolveRequest, context: aio.ServicerContext
    ) -> router_pb2.ResolveResponse:
        async with aio.insecure_channel(request.label) as channel:
            try:
                reply: router_pb2.ResolveResponse = await router_pb2_grpc.RouterControlStub(
                    channel
                ).Resolve(request, timeout=5)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc, "worker") from None
        return reply


async def serve(servicer: router_pb2_grpc.RouterControlServicer) -> tuple[aio.Server, str]:
    server = aio.server(interceptors=[ErrorInterceptor()])
    router_pb2_grpc.add_RouterControlServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def hops() -> AsyncIterator[tuple[str, str]]:
    """(upstream address, downstream address), both real servers."""
    # Only Resolve is needed; the generated stubs mark ListWorkers abstract.
    down, down_addr = await serve(Downstream())  # type: ignore[abstract]
    up, up_addr = await serve(Upstream())  # type: ignore[abstract]
    yield up_addr, down_addr
    await up.stop(0)
    await down.stop(0)


async def rpc_error(address: str, code: str = "OK", details: str = "") -> aio.AioRpcError:
    async with aio.insecure_channel(address) as channel:
        with pytest.raises(aio.AioRpcError) as info:
            await router_pb2_grpc.RouterControlStub(channel).Resolve(
                router_pb2.ResolveRequest(model=code, version=details), timeout=10
            )
    return info.value


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CARRIED = [
    ("INVALID_ARGUMENT", errors.InvalidArgumentError, "input 'x': expected FP32, got INT64"),
    ("NOT_FOUND", errors.NotFoundError, "unknown model 'zzz'"),
    ("ALREADY_EXISTS", errors.AlreadyExistsError, "version exists"),
    ("FAILED_PRECONDITION", errors.FailedPreconditionError, "sha256 mismatch"),
    ("UNAVAILABLE", errors.UnavailableError, "worker draining"),
    ("RESOURCE_EXHAUSTED", errors.ResourceExhaustedError, "queue full (64)"),
    ("DEADLINE_EXCEEDED", errors.DeadlineExceededError, "deadline exceeded in queue"),
    ("UNIMPLEMENTED", errors.UnimplementedError, "not supported"),
]


@pytest.mark.parametrize(("code", "cls", "details"), CARRIED, ids=[c[0] for c in CARRIED])
async def test_codes_and_messages_are_carried_over(
    hops: tuple[str, str], code: str, cls: type[ModelServeError], details: str
) -> None:
    _, down = hops
    err = from_rpc_error(await rpc_error(down, code, details), "worker")
    assert type(err) is cls
    assert err.code == grpc.StatusCode[code]
    assert err.message == details


@pytest.mark.parametrize("code", ["PERMISSION_DENIED", "UNAUTHENTICATED"])
async def test_a_peer_refusing_our_service_token_is_internal(
    hops: tuple[str, str], code: str
) -> None:
    """The caller's own credential was checked at the edge: a peer refusing this service's
    token is a misconfiguration, not the caller's problem (and never retryable UNAVAILABLE)."""
    err = from_rpc_error(await rpc_error(hops[1], code, "needs role service"), "worker")
    assert err.code == grpc.StatusCode.INTERNAL
    assert err.message == f"worker refused this service's credentials ({code.lower()})"


@pytest.mark.parametrize("code", ["ABORTED", "OUT_OF_RANGE", "DATA_LOSS"])
async def test_codes_without_a_class_keep_their_code(hops: tuple[str, str], code: str) -> None:
    err = from_rpc_error(await rpc_error(hops[1], code, "conflict on row 3"), "worker")
    assert err.code == grpc.StatusCode[code]
    assert err.message == "conflict on row 3"
    assert ModelServeError.code == grpc.StatusCode.INTERNAL  # the class default is untouched


@pytest.mark.parametrize(
    ("code", "message"),
    [("INTERNAL", "worker failed (internal)"), ("UNKNOWN", "worker failed (unknown)")],
)
async def test_internal_and_unknown_details_are_replaced(
    hops: tuple[str, str], code: str, message: str
) -> None:
    err = from_rpc_error(await rpc_error(hops[1], code, "Traceback: /srv/worker.py"), "worker")
    assert err.code == grpc.StatusCode[code]
    assert err.message == message


async def test_cancelled_without_details_says_cancelled(hops: tuple[str, str]) -> None:
    err = from_rpc_error(await rpc_error(hops[1], "CANCELLED", ""), "worker")
    assert err.code == grpc.StatusCode.CANCELLED
    assert err.message == "cancelled"


@pytest.mark.parametrize(
    "details",
    [
        "failed to connect to all addresses; last error: ipv4:10.1.2.3:8201: refused",
        "peer ipv6:[fd00::7]:8201 went away",
        "Socket closed",
        "Received GOAWAY from peer",
        "Stream removed (recvmsg:Connection reset by peer (104))",  # a worker killed mid-call
        "Connection refused",
    ],
)
async def test_transport_details_in_a_status_are_replaced(
    hops: tuple[str, str], details: str
) -> None:
    err = from_rpc_error(await rpc_error(hops[1], "UNAVAILABLE", details), "router")
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert err.message == "router unavailable"
    not_found = from_rpc_error(await rpc_error(hops[1], "NOT_FOUND", details), "router")
    assert not_found.code == grpc.StatusCode.NOT_FOUND
    assert not_found.message == "router failed (not_found)"


async def test_a_refused_connection_loses_its_address() -> None:
    port = closed_port()
    exc = await rpc_error(f"127.0.0.1:{port}")
    assert exc.code() == grpc.StatusCode.UNAVAILABLE
    assert str(port) in (exc.details() or "")  # what gRPC itself says ...
    err = from_rpc_error(exc, "worker")
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert err.message == "worker unavailable"  # ... and what travels upstream


async def test_across_a_hop_the_caller_sees_the_code_but_no_address(hops: tuple[str, str]) -> None:
    up, down = hops
    async with aio.insecure_channel(up) as channel:
        stub = router_pb2_grpc.RouterControlStub(channel)
        with pytest.raises(aio.AioRpcError) as info:
            await stub.Resolve(
                router_pb2.ResolveRequest(
                    model="NOT_FOUND", version="unknown model 'zzz'", label=down
                ),
                timeout=10,
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details() == "unknown model 'zzz'"

        port = closed_port()
        with pytest.raises(aio.AioRpcError) as info:
            await stub.Resolve(router_pb2.ResolveRequest(label=f"127.0.0.1:{port}"), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "worker unavailable"


async def test_a_failed_name_lookup_loses_the_hostname() -> None:
    exc = await rpc_error("worker-7.internal.invalid:8201")
    assert exc.code() == grpc.StatusCode.UNAVAILABLE
    err = from_rpc_error(exc, "worker")
    assert "internal.invalid" not in err.message
    assert err.message == "worker unavailable"
