"""The gateway's request path: the public edge.

ModelInfer here: decide the version once (label, split, experiment arm by routing key) and
write the decision into the request (``carry_decision``), validate the tensors against the
caller's signature of that version (a request that fails it is counted against the version,
``rejected``: no router ever sees it, and a canary must), then merge with concurrent requests
for the same version (``RequestMerger``) and forward to a router (``Hop``: pick, retry once
elsewhere on UNAVAILABLE, deadline less the hop margin, W3C context, x-request-id).
Everything else a router answers; the V2 servicer answers metadata from the catalog and
NOT_FOUND before any forwarding.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.direct import DirectLane, NoWorkerLeft
from gateway.merging import RequestMerger
from gateway.signatures import SignatureCache
from modelserve.calls import Call, Hop
from modelserve.catalog.composite_replica import CompositeCatalog
from modelserve.catalog.replica import Catalog
from modelserve.catalog.routing import carry_decision
from modelserve.catalog.version_stats import VersionStats, status_of
from modelserve.channels import Endpoint, EndpointSet
from modelserve.deadlines import Deadline, EdgeDeadlines
from modelserve.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    ModelServeError,
    UnavailableError,
    UnimplementedError,
)
from modelserve.metrics import ModelMetrics, status_name
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import composite_pb2, registry_pb2, registry_pb2_grpc
from modelserve.tensors import raw_layout, validate_infer_request
from modelserve.v2 import classification, repository

T = TypeVar("T")
RouterMethod = Callable[[pb_grpc.GRPCInferenceServiceStub], Callable[..., Awaitable[T]]]
# Only what the gateway really serves (ServerMetadata must not promise more).
EXTENSIONS = ("classification", "model_repository", "statistics", "binary_tensor_data")
READY_POLL_S = 0.1
SEEN_WITHIN_S = 5.0  # longest wait for this gateway's replica to show its own change


class GatewayDataPlane:
    server_name = "modelserve"
    extensions = EXTENSIONS
    caller_view = True

    def __init__(
        self,
        *,
        catalog: Catalog,
        composites: CompositeCatalog | None,
        routers: EndpointSet,
        edge: EdgeDeadlines,
        merge_max_in_flight: int,
        merge_max_bytes: int = 8 << 20,
        merge_gather_turns: int = 0,
        rejected: VersionStats | None = None,
        direct: DirectLane | None = None,
    ) -> None:
        self.catalog = catalog
        # Per version (GatewayControl, for canaries): requests refused after their version
        # was decided, and the calls the direct lane served (no router saw either).
        self.rejected = rejected or VersionStats()
        self._direct = direct
        self._model_metrics = ModelMetrics("gateway")
        self.composites = composites
        self.edge = edge
        self._routers = routers
        self._hop = Hop("router", attempts=2)
        self._registry_hop = Hop("registry", attempts=2)
        self._signatures = SignatureCache()
        self._merger = RequestMerger(
            forward=self._forward_infer,
            max_in_flight=merge_max_in_flight,
            max_bytes=merge_max_bytes,
            gather_turns=merge_gather_turns,
        )

    @property
    def merger(self) -> RequestMerger:
        return self._merger

    async def infer(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse:
        by_policy = not request.model_version and "label" not in request.parameters
        version = self.catalog.decide(request, call.forwarded)
        carry_decision(request, version)
        call = _with_fallback(call, self.catalog, version, by_policy)
        # Per version RED for the whole path behind the edge (the caller's view).
        started = self._model_metrics.start(version.model, version.version)
        code = "OK"
        try:
            return await self._infer_version(request, version, call)
        except BaseException as exc:
            code = status_name(exc)
            raise
        finally:
            self._model_metrics.end(version.model, version.version, started, code)

    async def _infer_version(
        self, request: pb.ModelInferRequest, version: registry_pb2.ModelVersion, call: Call
    ) -> pb.ModelInferResponse:
        signature = self._signatures.get(version)
        # Classification is this caller's view of an answer: taken off the request so it
        # merges with others, applied to this caller's part of the answer. (Most requests
        # name no outputs: the guard keeps their path one truth test longer, no more.)
        counts = (
            classification.take_class_counts(request, signature.outputs)
            if request.outputs and classification.wants_classification(request)
            else None
        )
        layout = raw_layout(request)  # read once: validation and the merge lane both use it
        try:
            validate_infer_request(
                request,
                signature.inputs,
                signature.outputs,
                signature.max_batch_size,
                layout=layout,
                passed=signature.passed,
            )
        except Exception as exc:
            self.rejected.record(version.model, version.version, 0.0, status_of(exc))
            raise
        # max_rows 0 sends the request alone: see Signature.mergeable.
        max_rows = signature.max_batch_size if signature.mergeable else 0
        response = await self._merger.infer(request, version.version, max_rows, call, layout)
        if counts:
            classification.apply(
                response, counts, signature.labels, batched=signature.max_batch_size > 0
            )
        return response

    async def infer_composite(
        self, request: pb.ModelInferRequest, composite: composite_pb2.Composite, call: Call
    ) -> pb.ModelInferResponse:
        """Checked against the composite's signature like any model's, then sent alone: a
        router runs the composite, and its members' calls are the ones worth batching.
        Routing parameters stay: the router routes every member call with them."""
        assert self.composites is not None
        signature = self.composites.signature(composite.name)
        counts = (
            classification.take_class_counts(request, signature.outputs)
            if request.outputs and classification.wants_classification(request)
            else None
        )
        validate_infer_request(
            request, signature.inputs, signature.outputs, signature.max_batch_size
        )
        response = await self._forward_infer(request, call)
        if counts:
            classification.apply(response, counts, {}, batched=signature.max_batch_size > 0)
        return response

    async def server_ready(self, call: Call) -> bool:
        try:
            answer = await self._to_router(lambda s: s.ServerReady, pb.ServerReadyRequest(), call)
        except Exception:
            return False
        return bool(answer.ready)

    async def model_ready(
        self, request: pb.ModelReadyRequest, version: registry_pb2.ModelVersion, call: Call
    ) -> bool:
        answer = await self._to_router(lambda s: s.ModelReady, request, call)
        return bool(answer.ready)

    async def composite_ready(
        self, request: pb.ModelReadyRequest, composite: composite_pb2.Composite, call: Call
    ) -> bool:
        return await self.model_ready(request, registry_pb2.ModelVersion(), call)

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, call: Call
    ) -> pb.RepositoryIndexResponse:
        return await self._to_router(lambda s: s.RepositoryIndex, request, call)

    async def statistics(
        self,
        request: pb.ModelStatisticsRequest,
        version: registry_pb2.ModelVersion | None,
        call: Call,
    ) -> pb.ModelStatisticsResponse:
        """The workers' statistics (through a router), with ``success`` and ``fail`` as the
        gateway measured them: the whole path behind the edge (decode, validation, merging,
        the router, the worker, the answer), what a caller sees; queue and compute_* stay the
        workers' own. A version this gateway has not served keeps the workers' figures."""
        answer = await self._to_router(lambda s: s.ModelStatistics, request, call)
        for stats in answer.model_stats:
            if not stats.version.isdigit():
                continue
            seen = self._model_metrics.durations.get((stats.name, int(stats.version)))
            if seen is None:
                continue
            ok_count, ok_ns, fail_count, fail_ns = seen
            stats.inference_stats.success.count, stats.inference_stats.success.ns = ok_count, ok_ns
            stats.inference_stats.fail.count, stats.inference_stats.fail.ns = fail_count, fail_ns
        return answer

    async def repository_unload(self, request: pb.RepositoryModelUnloadRequest, call: Call) -> None:
        """Mark the model unloaded in the registry; returns once this gateway's replica has
        it (so its next ModelInfer and ModelReady already say so). Workers let it go as the
        change reaches them."""
        repository.check_unload(request)
        self._require_model(request.model_name)
        await self._set_loaded(request.model_name, False, call)

    async def repository_load(self, request: pb.RepositoryModelLoadRequest, call: Call) -> None:
        """Clear the unloaded mark, then wait until a worker holds the default version READY
        (the client's deadline, at most ``LOAD_CAP_S``)."""
        repository.check_load(request)
        name = request.model_name
        self._require_model(name)
        remaining = call.deadline.remaining()
        cap = repository.LOAD_CAP_S if remaining is None else min(remaining, repository.LOAD_CAP_S)
        call = call.with_deadline(Deadline.after(cap))
        await self._set_loaded(name, True, call)
        await self._wait_ready(name, call)

    def _require_model(self, name: str) -> None:
        if self.composites is not None and name in self.composites:
            raise UnimplementedError(
                f"'{name}' is a composite: load or unload its member models instead"
            )
        self.catalog.get_model(name)  # NOT_FOUND naming it

    async def _set_loaded(self, name: str, loaded: bool, call: Call) -> None:
        await self._registry_hop.unary(
            self.catalog.registry_endpoints.pick,
            lambda e: e.hot_stub(registry_pb2_grpc.RegistryStub).SetModelLoaded,
            registry_pb2.SetModelLoadedRequest(model=name, loaded=loaded),
            call,
            timeout=min(10.0, call.deadline.remaining() or 10.0),
            none_left="no registry available",
        )
        give_up = time.monotonic() + SEEN_WITHIN_S
        while self.catalog.is_unloaded(name) == loaded:
            if time.monotonic() > give_up or call.deadline.expired():
                raise UnavailableError(
                    f"the registry took the change, but this gateway has not seen model "
                    f"'{name}' {'loaded' if loaded else 'unloaded'} yet; try again"
                )
            await asyncio.sleep(0.01)

    async def _wait_ready(self, name: str, call: Call) -> None:
        started = time.monotonic()
        polls = 0
        while True:
            version = self.catalog.resolve(name)  # the default version, as ModelReady has it
            try:
                if await self.model_ready(
                    pb.ModelReadyRequest(name=name), version, call.with_deadline(_poll(call))
                ):
                    return
            except ModelServeError:
                pass  # a router restarting: keep polling until the deadline
            polls += 1
            if polls % 10 == 0:
                failed = await self._version_reason(name, version.version, call)
                if failed.startswith("load failed"):
                    # RELIABILITY.md: a failed model load is FAILED_PRECONDITION on the admin
                    # API (never retried: loading it again fails again). tritonclient's
                    # load_model raises the same InferenceServerException for any code.
                    raise FailedPreconditionError(
                        f"model '{name}' version {version.version} did not load ({failed})"
                    )
            remaining = call.deadline.remaining()
            if remaining is not None and remaining <= READY_POLL_S:
                reason = await self._version_reason(name, version.version, call)
                raise DeadlineExceededError(
                    f"model '{name}' version {version.version} is not READY on any worker "
                    f"after {time.monotonic() - started:.1f} s" + (f" ({reason})" if reason else "")
                )
            await asyncio.sleep(READY_POLL_S)

    async def _version_reason(self, name: str, version: int, call: Call) -> str:
        """What the router's repository index says about one version ("" if it cannot)."""
        try:
            index = await self.repository_index(
                pb.RepositoryIndexRequest(), call.with_deadline(_poll(call))
            )
        except ModelServeError:
            return ""
        for entry in index.models:
            if entry.name == name and entry.version == str(version):
                return str(entry.reason)
        return ""

    async def _forward_infer(
        self, request: pb.ModelInferRequest, call: Call
    ) -> pb.ModelInferResponse:
        """A decided (maybe merged) request on to a worker directly when its version needs
        no router (``gateway/direct.py``), else to a router."""
        if self._direct is not None:
            version = self._direct.version_for(request)
            if version is not None:
                try:
                    return await self._direct.infer(request, version, call)
                except NoWorkerLeft:
                    pass  # every worker this gateway knows failed: a router may know more
        return await self._hop.unary(
            self._routers.pick, _model_infer, request, call, none_left="no router available"
        )

    async def _to_router(self, method: RouterMethod[T], request: Any, call: Call) -> T:
        return await self._hop.unary(
            self._routers.pick,
            lambda e: method(_stub(e)),
            request,
            call,
            none_left="no router available",
        )


def _with_fallback(
    call: Call, catalog: Catalog, version: registry_pb2.ModelVersion, by_policy: bool
) -> Call:
    """``call`` carrying where the router may send this request when no worker holds
    ``version`` READY: the policy's fallback, for a request the policy routed (a caller that
    named a version or label gets that or an error, never another one)."""
    fallback = catalog.policy_fallback(version.model) if by_policy else 0
    if fallback == version.version:
        fallback = 0
    if not fallback and not call.forwarded:
        return call  # the common case costs nothing
    return call.with_fallback(fallback)


def _poll(call: Call) -> Deadline:
    """One readiness poll: at most a second, never past the call's deadline."""
    remaining = call.deadline.remaining()
    return Deadline.after(1.0 if remaining is None else max(min(remaining, 1.0), 0.0))


def _stub(endpoint: Endpoint) -> pb_grpc.GRPCInferenceServiceStub:
    stub: pb_grpc.GRPCInferenceServiceStub = endpoint.hot_stub(pb_grpc.GRPCInferenceServiceStub)
    return stub


def _model_infer(endpoint: Endpoint) -> Callable[..., Awaitable[pb.ModelInferResponse]]:
    return _stub(endpoint).ModelInfer
