"""Forwarding one inference to a worker that holds the chosen version.

On UNAVAILABLE (worker full, draining, or gone) the request is retried on a different worker
while the caller's deadline allows: inference is idempotent. Anything else goes back to the
caller with its status unchanged.
"""

from __future__ import annotations

import logging

import grpc
from grpc import aio

from modelserve.channels import Endpoint, outbound_timeout
from modelserve.errors import UnavailableError, from_rpc_error
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2
from modelserve.tracing import outbound_metadata
from router.workers import WorkerPool

log = logging.getLogger(__name__)


class Forwarder:
    def __init__(self, *, pool: WorkerPool, retry_attempts: int, default_timeout: float) -> None:
        self._pool = pool
        self._retry_attempts = retry_attempts
        self._default_timeout = default_timeout

    async def infer(
        self,
        request: pb.ModelInferRequest,
        version: registry_pb2.ModelVersion,
        context: aio.ServicerContext | None,
    ) -> pb.ModelInferResponse:
        request.model_version = str(version.version)
        tried: set[str] = set()
        last: grpc.RpcError | None = None
        for _attempt in range(1 + self._retry_attempts):
            endpoint = self._pool.choose(version.model, version.version, tried)
            if endpoint is None:
                break
            tried.add(endpoint.address)
            try:
                return await self._call(endpoint, request, context)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise from_rpc_error(exc, "worker") from None
                endpoint.record_failure()
                last = exc
                log.info(
                    "worker %s unavailable for %s v%d; trying another",
                    endpoint.address,
                    version.model,
                    version.version,
                )
        if last is not None:
            raise from_rpc_error(last, "worker") from None
        raise UnavailableError(
            f"no serving worker holds model '{version.model}' version {version.version} yet"
        )

    async def _call(
        self, endpoint: Endpoint, request: pb.ModelInferRequest, context: aio.ServicerContext | None
    ) -> pb.ModelInferResponse:
        stub = endpoint.stub(pb_grpc.GRPCInferenceServiceStub)
        endpoint.outstanding += 1
        try:
            response: pb.ModelInferResponse = await stub.ModelInfer(
                request,
                timeout=outbound_timeout(context, self._default_timeout),
                metadata=outbound_metadata(),
            )
        finally:
            endpoint.outstanding -= 1
        endpoint.record_success()
        return response
