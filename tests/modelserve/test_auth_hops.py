"""Service identity between hops, on real grpc.aio servers: an edge authenticates the caller,
calls a peer through Hop with the service token (not the caller's), and names the caller in
x-modelserve-caller; a caller cannot forge that header."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from modelserve.auth.authenticator import Authenticator
from modelserve.auth.client import bearer_interceptors, set_service_token_file
from modelserve.auth.identity import CALLER_METADATA
from modelserve.auth.interceptor import AuthInterceptor
from modelserve.auth.keys import KeyStore, new_key
from modelserve.calls import Call, Hop
from modelserve.channels import EndpointSet
from modelserve.interceptors import ErrorInterceptor
from modelserve.proto.modelserve.v1 import router_pb2, router_pb2_grpc


class Peer(router_pb2_grpc.RouterControlServicer):
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    async def Resolve(
        self, request: router_pb2.ResolveRequest, context: aio.ServicerContext
    ) -> router_pb2.ResolveResponse:
        self.seen.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        return router_pb2.ResolveResponse(model=request.model)


class Edge(router_pb2_grpc.RouterControlServicer):
    def __init__(self, peers: EndpointSet) -> None:
        self.peers = peers

    async def Resolve(
        self, request: router_pb2.ResolveRequest, context: aio.ServicerContext
    ) -> router_pb2.ResolveResponse:
        return await Hop("peer").unary(
            self.peers.pick,
            lambda e: e.stub(router_pb2_grpc.RouterControlStub).Resolve,
            request,
            Call.incoming(context),
        )


async def _serve(
    servicer: router_pb2_grpc.RouterControlServicer, auth: AuthInterceptor
) -> tuple[aio.Server, str]:
    server = aio.server(interceptors=[auth, ErrorInterceptor()])
    router_pb2_grpc.add_RouterControlServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def hops(tmp_path: Path) -> AsyncIterator[tuple[str, Peer, dict[str, str]]]:
    tokens: dict[str, str] = {}
    entries = []
    for key_id, role in (("alice", "read"), ("svc", "service")):
        tokens[key_id], entry = new_key(key_id, [role])
        entries.append(entry)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": entries}))
    (tmp_path / "service-token").write_text(tokens["svc"] + "\n")
    set_service_token_file(tmp_path / "service-token")  # before any internal channel is made
    peer = Peer()  # type: ignore[abstract]  # only Resolve is needed
    peer_server, peer_address = await _serve(peer, AuthInterceptor(Authenticator(KeyStore(keys))))
    peers = EndpointSet()
    await peers.update([peer_address])
    edge = Edge(peers)  # type: ignore[abstract]
    edge_server, edge_address = await _serve(edge, AuthInterceptor(Authenticator(KeyStore(keys))))
    yield edge_address, peer, tokens
    set_service_token_file(None)
    await peers.close()
    await edge_server.stop(0)
    await peer_server.stop(0)


async def test_the_peer_gets_the_service_token_and_the_caller_by_name(
    hops: tuple[str, Peer, dict[str, str]],
) -> None:
    edge, peer, tokens = hops
    async with aio.insecure_channel(edge, interceptors=bearer_interceptors(tokens["alice"])) as ch:
        stub = router_pb2_grpc.RouterControlStub(ch)
        forged = ((CALLER_METADATA, "root"),)
        reply = await stub.Resolve(router_pb2.ResolveRequest(model="m"), metadata=forged, timeout=5)
    assert reply.model == "m"
    seen = peer.seen[0]
    assert seen["authorization"] == f"Bearer {tokens['svc']}"  # never the caller's credential
    assert seen[CALLER_METADATA] == "alice"  # the forged "root" was replaced


async def test_without_the_service_token_the_peer_refuses(
    hops: tuple[str, Peer, dict[str, str]], tmp_path: Path
) -> None:
    edge, peer, tokens = hops
    (tmp_path / "service-token").write_text("msk_revoked\n")  # re-read on change
    async with aio.insecure_channel(edge, interceptors=bearer_interceptors(tokens["alice"])) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            await router_pb2_grpc.RouterControlStub(ch).Resolve(
                router_pb2.ResolveRequest(model="m"), timeout=5
            )
    # Alice's own token is fine: she learns the service is misconfigured, not that she is.
    assert exc.value.code() == grpc.StatusCode.INTERNAL
    assert "refused this service's credentials" in (exc.value.details() or "")
    assert not peer.seen


async def test_a_missing_service_token_file_is_refused_by_the_peer_not_raised(
    hops: tuple[str, Peer, dict[str, str]], tmp_path: Path
) -> None:
    edge, _peer, tokens = hops
    (tmp_path / "service-token").unlink()
    async with aio.insecure_channel(edge, interceptors=bearer_interceptors(tokens["alice"])) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            await router_pb2_grpc.RouterControlStub(ch).Resolve(
                router_pb2.ResolveRequest(model="m"), timeout=5
            )
    assert exc.value.code() == grpc.StatusCode.INTERNAL  # the peer said UNAUTHENTICATED
    (tmp_path / "service-token").write_text(tokens["svc"])  # put back: works again at once
    async with aio.insecure_channel(edge, interceptors=bearer_interceptors(tokens["alice"])) as ch:
        reply = await router_pb2_grpc.RouterControlStub(ch).Resolve(
            router_pb2.ResolveRequest(model="m"), timeout=5
        )
    assert reply.model == "m"
