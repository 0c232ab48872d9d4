"""The worker's request path: run the request on the sessions of the version it names.

ModelInfer here: refuse a request with too little deadline left to start, take the version
the request names (``Catalog.decide``; a V2 client calling a worker directly may name a label),
validate the tensors against the loaded session's signature (callers may reach a worker
directly), decode, run through the version's dynamic batcher (or alone), encode, and record
Triton-style statistics and Prometheus metrics.
"""

from __future__ import annotations

import time

from modelserve import tracing
from modelserve.calls import Call
from modelserve.catalog.composite_replica import CompositeCatalog
from modelserve.catalog.replica import Catalog
from modelserve.errors import ModelServeError, NotFoundError, UnimplementedError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import composite_pb2, registry_pb2
from modelserve.tensors import (
    MERGED_REQUESTS_PARAMETER,
    decode_inputs,
    encode_outputs,
    validate_infer_request,
)
from modelserve.v2 import metadata, repository
from worker.batcher import run_unbatched
from worker.loader import ModelManager
from worker.metrics import INFER_LATENCY, INFER_REQUESTS


class WorkerDataPlane:
    server_name = "modelserve-worker"
    extensions = ("statistics",)
    caller_view = False  # a worker runs the model's own inputs (features filled upstream)
    composites: CompositeCatalog | None = None  # composites run in routers
    edge = None

    def __init__(self, *, catalog: Catalog, manager: ModelManager, min_budget_s: float) -> None:
        self.catalog = catalog
        self._manager = manager
        self._min_budget_s = min_budget_s

    async def infer(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse:
        start = time.perf_counter_ns()
        call.deadline.require(self._min_budget_s, "the worker")
        version = self.catalog.decide(request, call.forwarded, inner=True)
        held = self._manager.get(version.model, version.version)
        assert held.session is not None and held.stats is not None
        labels = (version.model, str(version.version))
        merged = merged_request_count(request)
        try:
            t0 = time.perf_counter_ns()
            validate_infer_request(
                request, held.session.inputs, held.session.outputs, version.config.max_batch_size
            )
            inputs = decode_inputs(request)
            names = [o.name for o in request.outputs] or None
            t1 = time.perf_counter_ns()
            if held.batcher is not None:
                result = await held.batcher.submit(inputs, names, call.deadline)
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
        if tracing.enabled():  # the batcher's measured stages, as children of this RPC's span
            tracing.stage_spans(
                [
                    ("worker.queue_wait", result.queue_ns),
                    ("worker.model_run", result.input_ns + result.infer_ns + result.output_ns),
                ],
                time.time_ns() - (t3 - t2),
                **{"modelserve.batch_rows": result.batch_rows, "modelserve.rows": result.rows},
            )
        return response

    async def infer_composite(
        self, request: pb.ModelInferRequest, composite: composite_pb2.Composite, call: Call
    ) -> pb.ModelInferResponse:
        raise NotFoundError(f"unknown model '{request.model_name}'")  # composites: routers

    async def server_ready(self, call: Call) -> bool:
        return True  # once the catalog is synced (the servicer checks)

    async def model_ready(
        self, request: pb.ModelReadyRequest, version: registry_pb2.ModelVersion, call: Call
    ) -> bool:
        try:
            self._manager.get(version.model, version.version)
        except ModelServeError:
            return False
        return True

    async def composite_ready(
        self, request: pb.ModelReadyRequest, composite: composite_pb2.Composite, call: Call
    ) -> bool:
        return False

    async def repository_load(self, request: pb.RepositoryModelLoadRequest, call: Call) -> None:
        raise UnimplementedError(repository.ON_THE_GATEWAY)

    async def repository_unload(self, request: pb.RepositoryModelUnloadRequest, call: Call) -> None:
        raise UnimplementedError(repository.ON_THE_GATEWAY)

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, call: Call
    ) -> pb.RepositoryIndexResponse:
        ready = {(h.record.model, h.record.version) for h in self._manager.ready()}
        return metadata.repository_index(self.catalog.models.values(), ready)

    async def statistics(
        self,
        request: pb.ModelStatisticsRequest,
        version: registry_pb2.ModelVersion | None,
        call: Call,
    ) -> pb.ModelStatisticsResponse:
        wanted = None if version is None else (version.model, version.version)
        out = pb.ModelStatisticsResponse()
        for key, held in sorted(self._manager.held.items()):
            if held.stats is not None and (wanted is None or key == wanted):
                out.model_stats.append(held.stats.to_proto())
        return out


def merged_request_count(request: pb.ModelInferRequest) -> int:
    """How many client requests the gateway merged into ``request`` (1 if not merged)."""
    param = request.parameters.get(MERGED_REQUESTS_PARAMETER)
    if param is None:
        return 1
    rows = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
    return max(1, min(int(param.int64_param), int(rows)))
