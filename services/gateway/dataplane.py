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

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.merging import RequestMerger
from gateway.signatures import SignatureCache
from modelserve.calls import Call, Hop
from modelserve.catalog.composite_replica import CompositeCatalog
from modelserve.catalog.replica import Catalog
from modelserve.catalog.routing import carry_decision
from modelserve.catalog.version_stats import VersionStats, status_of
from modelserve.channels import Endpoint, EndpointSet
from modelserve.deadlines import EdgeDeadlines
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import composite_pb2, registry_pb2
from modelserve.tensors import validate_infer_request

T = TypeVar("T")
RouterMethod = Callable[[pb_grpc.GRPCInferenceServiceStub], Callable[..., Awaitable[T]]]
EXTENSIONS = ("classification", "model_repository", "statistics", "binary_tensor_data")


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
        rejected: VersionStats | None = None,
    ) -> None:
        self.catalog = catalog
        # Requests refused after their version was decided, per version (GatewayControl).
        self.rejected = rejected or VersionStats()
        self.composites = composites
        self.edge = edge
        self._routers = routers
        self._hop = Hop("router", attempts=2)
        self._signatures = SignatureCache()
        self._merger = RequestMerger(
            forward=self._forward_infer,
            max_in_flight=merge_max_in_flight,
            max_bytes=merge_max_bytes,
        )

    @property
    def merger(self) -> RequestMerger:
        return self._merger

    async def infer(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse:
        version = self.catalog.decide(request, call.forwarded)
        carry_decision(request, version)
        signature = self._signatures.get(version)
        try:
            validate_infer_request(
                request, signature.inputs, signature.outputs, signature.max_batch_size
            )
        except Exception as exc:
            self.rejected.record(version.model, version.version, 0.0, status_of(exc))
            raise
        # max_rows 0 sends the request alone: see Signature.mergeable.
        max_rows = signature.max_batch_size if signature.mergeable else 0
        return await self._merger.infer(request, version.version, max_rows, call)

    async def infer_composite(
        self, request: pb.ModelInferRequest, composite: composite_pb2.Composite, call: Call
    ) -> pb.ModelInferResponse:
        """Checked against the composite's signature like any model's, then sent alone: a
        router runs the composite, and its members' calls are the ones worth batching.
        Routing parameters stay: the router routes every member call with them."""
        assert self.composites is not None
        signature = self.composites.signature(composite.name)
        validate_infer_request(
            request, signature.inputs, signature.outputs, signature.max_batch_size
        )
        return await self._forward_infer(request, call)

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
        return await self._to_router(lambda s: s.ModelStatistics, request, call)

    async def _forward_infer(
        self, request: pb.ModelInferRequest, call: Call
    ) -> pb.ModelInferResponse:
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


def _stub(endpoint: Endpoint) -> pb_grpc.GRPCInferenceServiceStub:
    stub: pb_grpc.GRPCInferenceServiceStub = endpoint.stub(pb_grpc.GRPCInferenceServiceStub)
    return stub


def _model_infer(endpoint: Endpoint) -> Callable[..., Awaitable[pb.ModelInferResponse]]:
    return _stub(endpoint).ModelInfer
