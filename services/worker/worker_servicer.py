"""The worker's V2 endpoint: runs requests on the sessions of the versions it holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from grpc import aio

from modelserve.catalog.replica import Catalog
from modelserve.errors import DeadlineExceededError, ModelServeError
from modelserve.metrics import INFER_LATENCY, INFER_REQUESTS
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import (
    MERGED_REQUESTS_PARAMETER,
    decode_inputs,
    encode_outputs,
    validate_infer_request,
)
from modelserve.v2 import metadata as v2_metadata
from modelserve.v2.streaming import stream_infer
from worker.batcher import run_unbatched
from worker.loader import ModelManager


class WorkerInferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, *, catalog: Catalog, manager: ModelManager, min_budget_s: float) -> None:
        self._catalog = catalog
        self._manager = manager
        self._min_budget_s = min_budget_s

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._catalog.synced.is_set())

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="modelserve-worker", version="0.1.0", extensions=["statistics"]
        )

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        version = self._catalog.resolve(request.name, request.version)
        try:
            self._manager.get(version.model, version.version)
        except ModelServeError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = self._catalog.get_model(request.name)
        return v2_metadata.model_metadata(
            model, self._catalog.resolve(request.name, request.version)
        )

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        return v2_metadata.model_config(self._catalog.resolve(request.name, request.version))

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        ready = {(h.record.model, h.record.version) for h in self._manager.ready()}
        return v2_metadata.repository_index(self._catalog.models.values(), ready)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        wanted: tuple[str, int] | None = None
        if request.name:
            v = self._catalog.resolve(request.name, request.version)
            wanted = (v.model, v.version)
        out = pb.ModelStatisticsResponse()
        for key, held in sorted(self._manager.held.items()):
            if held.stats is not None and (wanted is None or key == wanted):
                out.model_stats.append(held.stats.to_proto())
        return out

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        start = time.perf_counter_ns()
        remaining = context.time_remaining()
        if remaining is not None and remaining < self._min_budget_s:
            raise DeadlineExceededError(
                f"only {remaining * 1000:.1f} ms of deadline left; the worker needs at least "
                f"{self._min_budget_s * 1000:.1f} ms to start"
            )
        deadline = None if remaining is None else asyncio.get_running_loop().time() + remaining
        label = request.parameters["label"].string_param if "label" in request.parameters else ""
        version = self._catalog.resolve(request.model_name, request.model_version, label)
        held = self._manager.get(version.model, version.version)
        assert held.session is not None and held.stats is not None
        labels = (version.model, str(version.version))
        merged = merged_request_count(request)
        try:
            t0 = time.perf_counter_ns()
            # Callers may reach a worker directly (debugging): same checks as the gateway.
            validate_infer_request(
                request, held.session.inputs, held.session.outputs, version.config.max_batch_size
            )
            inputs = decode_inputs(request)
            names = [o.name for o in request.outputs] or None
            t1 = time.perf_counter_ns()
            if held.batcher is not None:
                result = await held.batcher.submit(inputs, names, deadline)
            else:
                result = await run_unbatched(held.session, held.stats, inputs, names)
            t2 = time.perf_counter_ns()
            response = pb.ModelInferResponse(
                model_name=version.model, model_version=str(version.version), id=request.id
            )
            encode_outputs(response, result.outputs)
            t3 = time.perf_counter_ns()
        except BaseException:  # a caller cancelled while queued or running is a failure too
            held.stats.record_failure(time.perf_counter_ns() - start, merged)
            INFER_REQUESTS.labels(*labels, "error").inc()
            raise
        # Decoding and encoding are this request's own share of compute input and output.
        held.stats.record_request(
            rows=result.rows,
            total_ns=t3 - start,
            queue_ns=result.queue_ns,
            input_ns=t1 - t0 + result.input_ns,
            infer_ns=result.infer_ns,
            output_ns=t3 - t2 + result.output_ns,
            requests=merged,
        )
        INFER_REQUESTS.labels(*labels, "ok").inc()
        INFER_LATENCY.labels(*labels).observe((t3 - start) / 1e9)
        return response

    def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        return stream_infer(request_iterator, context, self.ModelInfer)


def merged_request_count(request: pb.ModelInferRequest) -> int:
    """How many client requests the gateway merged into ``request`` (1 if not merged)."""
    param = request.parameters.get(MERGED_REQUESTS_PARAMETER)
    if param is None:
        return 1
    rows = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
    return max(1, min(int(param.int64_param), int(rows)))
