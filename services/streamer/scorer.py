"""Scoring through the gateway: one ModelInfer per event, sent concurrently (the gateway
merges concurrent calls for one version into one internal call, and each event keeps its own
routing key, so splits and canaries decide per key), retried on transient codes."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

import grpc

from modelserve.channels import EndpointSet
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tracing import outbound_metadata
from streamer.events import ModelRef

log = logging.getLogger(__name__)

# RELIABILITY.md: UNAVAILABLE is the retryable code; a deadline that passed at the gateway and
# an overloaded gateway (RESOURCE_EXHAUSTED) are transient for a stream too, which can wait.
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0


@dataclass
class ScoreFailure(Exception):
    code: grpc.StatusCode
    message: str
    attempts: int

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class GatewayScorer:
    def __init__(
        self,
        *,
        gateways: EndpointSet,
        model: ModelRef,
        max_attempts: int,
        call_timeout_s: float,
    ) -> None:
        self._gateways = gateways
        self.model = model
        self._max_attempts = max_attempts
        self._call_timeout = call_timeout_s
        self._signature: dict[str, str] | None = None

    def _stub(self) -> tuple[str, pb_grpc.GRPCInferenceServiceStub]:
        endpoint = self._gateways.pick()
        if endpoint is None:
            raise ScoreFailure(grpc.StatusCode.UNAVAILABLE, "no gateway known to discovery", 0)
        stub: pb_grpc.GRPCInferenceServiceStub = endpoint.stub(pb_grpc.GRPCInferenceServiceStub)
        return endpoint.address, stub

    async def signature(self) -> dict[str, str]:
        """Input name -> V2 datatype, as callers see the model (enriched inputs excluded)."""
        if self._signature is None:
            _, stub = self._stub()
            meta = await stub.ModelMetadata(
                pb.ModelMetadataRequest(name=self.model.name, version=self.model.selector),
                timeout=self._call_timeout,
            )
            self._signature = {t.name: t.datatype for t in meta.inputs}
        return self._signature

    def forget_signature(self) -> None:
        self._signature = None

    async def score(self, request: pb.ModelInferRequest, deadline: float) -> pb.ModelInferResponse:
        """Score one event; ScoreFailure when a permanent code comes back, or when transient
        ones came ``max_attempts`` times or the batch ``deadline`` (monotonic) passed."""
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ScoreFailure(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "batch deadline passed", attempt - 1
                )
            code, message = grpc.StatusCode.UNAVAILABLE, ""
            try:
                _, stub = self._stub()
                response: pb.ModelInferResponse = await stub.ModelInfer(
                    request,
                    timeout=min(self._call_timeout, remaining),
                    metadata=outbound_metadata(),
                )
                return response
            except grpc.aio.AioRpcError as exc:
                code, message = exc.code(), exc.details() or ""
            except ScoreFailure as exc:
                code, message = exc.code, exc.message
            if code not in TRANSIENT or attempt >= self._max_attempts:
                raise ScoreFailure(code, message, attempt)
            delay = min(BACKOFF_BASE_S * 2 ** (attempt - 1), BACKOFF_CAP_S)
            await asyncio.sleep(delay * (0.5 + random.random()))
