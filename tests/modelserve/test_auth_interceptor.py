"""AuthInterceptor on a real grpc.aio server (loopback), behind admission as in start_runtime."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from modelserve.admission import AdmissionInterceptor
from modelserve.auth.authenticator import Authenticator
from modelserve.auth.client import bearer_interceptors
from modelserve.auth.identity import Identity, current_identity
from modelserve.auth.interceptor import AuthInterceptor
from modelserve.auth.keys import KeyStore, new_key
from modelserve.auth.limits import IdentityLimits
from modelserve.errors import NotFoundError
from modelserve.interceptors import ErrorInterceptor
from modelserve.proto.modelserve.v1 import registry_pb2

release = asyncio.Event()


async def _who(request: bytes, context: aio.ServicerContext) -> bytes:
    identity = current_identity()
    return (identity.id if identity else "-").encode()


async def _slow(request: bytes, context: aio.ServicerContext) -> bytes:
    await release.wait()
    return b"done"


async def _set_label(
    request: registry_pb2.SetLabelRequest, context: aio.ServicerContext
) -> registry_pb2.Model:
    if request.model == "missing":
        raise NotFoundError("unknown model 'missing'")
    return registry_pb2.Model(name=request.model)


def _handlers() -> list[grpc.GenericRpcHandler]:
    registry = grpc.method_handlers_generic_handler(
        "modelserve.v1.Registry",
        {
            "ListModels": grpc.unary_unary_rpc_method_handler(_who),
            "GetModel": grpc.unary_unary_rpc_method_handler(_slow),
            "SetLabel": grpc.unary_unary_rpc_method_handler(
                _set_label,
                request_deserializer=registry_pb2.SetLabelRequest.FromString,
                response_serializer=registry_pb2.Model.SerializeToString,
            ),
        },
    )
    unknown = grpc.method_handlers_generic_handler(
        "test.NotInTheTable", {"Call": grpc.unary_unary_rpc_method_handler(_who)}
    )
    return [registry, unknown]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, str]]]:
    tokens: dict[str, str] = {}
    entries = []
    for key_id, role in (("alice", "read"), ("ops", "admin"), ("svc", "service")):
        tokens[key_id], entry = new_key(key_id, [role])
        entries.append(entry)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": entries}))
    auth = AuthInterceptor(
        Authenticator(KeyStore(keys)), IdentityLimits(max_concurrent=2, max_streams=4)
    )
    srv = aio.server(
        interceptors=[
            AdmissionInterceptor(max_unary=100, max_streams=100),
            auth,
            ErrorInterceptor(),
        ]
    )
    srv.add_generic_rpc_handlers(_handlers())
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    release.clear()
    yield f"127.0.0.1:{port}", tokens
    release.set()
    await srv.stop(0)


async def test_handlers_see_the_identity_and_unknown_methods_are_refused(
    server: tuple[str, dict[str, str]],
) -> None:
    address, tokens = server
    async with aio.insecure_channel(
        address, interceptors=bearer_interceptors(tokens["alice"])
    ) as ch:
        who = ch.unary_unary("/modelserve.v1.Registry/ListModels")
        assert await who(b"", timeout=5) == b"alice"
        with pytest.raises(grpc.RpcError) as exc:
            await ch.unary_unary("/test.NotInTheTable/Call")(b"", timeout=5)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "role table" in (exc.value.details() or "")


async def test_concurrency_per_identity_with_pushback_and_services_exempt(
    server: tuple[str, dict[str, str]],
) -> None:
    address, tokens = server
    async with (
        aio.insecure_channel(address, interceptors=bearer_interceptors(tokens["alice"])) as ch,
        aio.insecure_channel(address, interceptors=bearer_interceptors(tokens["svc"])) as svc,
    ):
        slow = ch.unary_unary("/modelserve.v1.Registry/GetModel")
        held = [asyncio.ensure_future(slow(b"", timeout=10)) for _ in range(2)]
        await asyncio.sleep(0.2)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await slow(b"", timeout=5)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(exc.value.trailing_metadata() or ())["grpc-retry-pushback-ms"] == "100"
        service_calls = [
            asyncio.ensure_future(
                svc.unary_unary("/modelserve.v1.Registry/GetModel")(b"", timeout=10)
            )
            for _ in range(3)
        ]
        await asyncio.sleep(0.2)
        release.set()
        assert await asyncio.gather(*held, *service_calls) == [b"done"] * 5


async def test_admin_writes_are_audited_with_target_and_outcome(
    server: tuple[str, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    address, tokens = server
    request = registry_pb2.SetLabelRequest(model="fraud", label="production", version=1)
    caplog.set_level(logging.INFO, logger="modelserve.audit")
    for who, code in (("ops", grpc.StatusCode.OK), ("alice", grpc.StatusCode.PERMISSION_DENIED)):
        async with aio.insecure_channel(
            address, interceptors=bearer_interceptors(tokens[who])
        ) as ch:
            call = ch.unary_unary(
                "/modelserve.v1.Registry/SetLabel",
                request_serializer=registry_pb2.SetLabelRequest.SerializeToString,
                response_deserializer=registry_pb2.Model.FromString,
            )
            try:
                await call(request, timeout=5)
                got = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                got = exc.code()
                assert "needs role admin" in (exc.details() or "")
            assert got == code
    async with aio.insecure_channel(address, interceptors=bearer_interceptors(tokens["ops"])) as ch:
        call = ch.unary_unary(
            "/modelserve.v1.Registry/SetLabel",
            request_serializer=registry_pb2.SetLabelRequest.SerializeToString,
            response_deserializer=registry_pb2.Model.FromString,
        )
        missing = registry_pb2.SetLabelRequest(model="missing", label="x", version=1)
        with pytest.raises(grpc.RpcError):
            await call(missing, timeout=5)
    lines = [r.getMessage() for r in caplog.records if r.name == "modelserve.audit"]
    assert lines == [
        "audit identity=ops method=/modelserve.v1.Registry/SetLabel target=fraud outcome=OK",
        "audit identity=alice method=/modelserve.v1.Registry/SetLabel target=fraud "
        "outcome=PERMISSION_DENIED",
        "audit identity=ops method=/modelserve.v1.Registry/SetLabel target=missing "
        "outcome=NOT_FOUND",
    ]
    assert not any(t in m for t in tokens.values() for m in caplog.messages)


async def test_a_peer_resolver_names_callers_without_a_token(tmp_path: Path) -> None:
    """The hook mTLS will use: a call without a bearer token may be identified by its
    transport peer (here the loopback address stands in for a client certificate)."""

    def peer(context: aio.ServicerContext) -> Identity | None:
        return Identity("peer-a", frozenset({"read"}), source="mtls") if context.peer() else None

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": []}))
    auth = AuthInterceptor(Authenticator(KeyStore(keys), peer=peer))
    srv = aio.server(interceptors=[auth, ErrorInterceptor()])
    srv.add_generic_rpc_handlers(_handlers())
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert await ch.unary_unary("/modelserve.v1.Registry/ListModels")(b"", timeout=5) == (
                b"peer-a"
            )
    finally:
        await srv.stop(0)
