"""Calls from the gateway to routers: deadline policy, balancing, one retry on UNAVAILABLE."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from modelserve.channels import Endpoint, EndpointSet
from modelserve.errors import UnavailableError, from_rpc_error
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tracing import outbound_metadata

T = TypeVar("T")
# Caller metadata that routing decisions may use; everything else stays at the edge.
FORWARDED_METADATA = ("x-routing-key", "x-request-id")


class RouterClient:
    def __init__(
        self,
        *,
        routers: EndpointSet,
        default_deadline: float,
        min_deadline: float,
        max_deadline: float,
    ) -> None:
        self._routers = routers
        self._default = default_deadline
        self._min = min_deadline
        self._max = max_deadline

    def deadline(self, context: aio.ServicerContext) -> float:
        """The client's deadline, or the default, clamped to [min, max] (RELIABILITY.md)."""
        remaining = context.time_remaining()
        value = self._default if remaining is None else remaining
        return min(max(value, self._min), self._max)

    async def call(
        self,
        method: Callable[[pb_grpc.GRPCInferenceServiceStub], Callable[..., Awaitable[T]]],
        request: Any,
        context: aio.ServicerContext,
    ) -> T:
        """Forward one RPC for ``context``: its deadline policy and its routing metadata."""
        metadata = outbound_metadata(
            [(k, v) for k, v in (context.invocation_metadata() or ()) if k in FORWARDED_METADATA]
        )
        return await self.send(method, request, self.deadline(context), metadata)

    async def infer(self, request: pb.ModelInferRequest, timeout: float) -> pb.ModelInferResponse:
        """ModelInfer with an explicit deadline (also used for merged calls)."""
        return await self.send(lambda s: s.ModelInfer, request, timeout, outbound_metadata())

    async def send(
        self,
        method: Callable[[pb_grpc.GRPCInferenceServiceStub], Callable[..., Awaitable[T]]],
        request: Any,
        timeout: float,
        metadata: list[tuple[str, str | bytes]],
    ) -> T:
        tried: set[str] = set()
        last: grpc.RpcError | None = None
        for _ in range(2):
            endpoint = self._routers.pick(tried)
            if endpoint is None:
                break
            tried.add(endpoint.address)
            try:
                return await self._one(endpoint, method, request, timeout, metadata)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise from_rpc_error(exc, "router") from None
                endpoint.record_failure()
                last = exc
        if last is not None:
            raise from_rpc_error(last, "router") from None
        raise UnavailableError("no router available")

    @staticmethod
    async def _one(
        endpoint: Endpoint,
        method: Callable[[pb_grpc.GRPCInferenceServiceStub], Callable[..., Awaitable[T]]],
        request: Any,
        deadline_s: float,
        metadata: list[tuple[str, str | bytes]],
    ) -> T:
        stub = endpoint.stub(pb_grpc.GRPCInferenceServiceStub)
        endpoint.outstanding += 1
        try:
            result = await method(stub)(request, timeout=deadline_s, metadata=metadata)
        finally:
            endpoint.outstanding -= 1
        endpoint.record_success()
        return result
