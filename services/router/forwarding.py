"""Forwarding one inference to a worker that holds the decided version READY.

The hop's rules are ``modelserve.calls.Hop``'s: on UNAVAILABLE (worker full, draining, or gone)
the request is retried on a different worker while the deadline allows (inference is
idempotent); anything else goes back to the caller with its status unchanged. The request
already names the version (the hop that decided wrote it); nothing here rewrites it.

A worker is ejected after consecutive UNAVAILABLE *or* DEADLINE_EXCEEDED answers (T34): a
black-holed worker (SIGSTOPped, a partitioned link: its socket takes bytes, nothing answers,
no RST) fails calls only at their deadline, long before keepalive (30 s + 10 s) drops the
transport; and after the drop, reconnects hang in the handshake until the deadline again. So
deadlines, not keepalive, are what detect it (Envoy's consecutive gateway failures count
timeouts the same way). DEADLINE_EXCEEDED is still never retried: the caller's time is gone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from modelserve.calls import Call
from modelserve.channels import Endpoint
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2
from modelserve.workers import WorkerPool, worker_hop

# Everything in the router that sends a request on to a version (the forwarder, the prediction
# cache in front of it, lookups, composite members, shadow calls) has this shape.
ToVersion = Callable[
    [pb.ModelInferRequest, registry_pb2.ModelVersion, Call], Awaitable[pb.ModelInferResponse]
]


class Forwarder:
    def __init__(self, *, pool: WorkerPool, retry_attempts: int, default_timeout: float) -> None:
        self._pool = pool
        self._hop = worker_hop(retry_attempts, default_timeout)

    async def infer(
        self, request: pb.ModelInferRequest, version: registry_pb2.ModelVersion, call: Call
    ) -> pb.ModelInferResponse:
        model, number = version.model, version.version
        return await self._hop.unary(
            lambda tried: self._pool.choose(model, number, tried),
            _model_infer,
            request,
            call,
            none_left=f"no serving worker holds model '{model}' version {number} yet",
        )


def _model_infer(endpoint: Endpoint) -> Callable[..., Awaitable[pb.ModelInferResponse]]:
    stub: pb_grpc.GRPCInferenceServiceStub = endpoint.hot_stub(pb_grpc.GRPCInferenceServiceStub)
    return stub.ModelInfer
