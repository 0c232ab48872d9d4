"""The public V2 endpoint: validates every request against the model's signature, then
forwards it to a router. Metadata answers come from the local registry replica."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio

from gateway import composites as composite_requests
from gateway.merging import RequestMerger
from gateway.signatures import SignatureCache
from gateway.upstream import RouterClient
from modelserve.catalog.composite_replica import CompositeCatalog
from modelserve.catalog.replica import Catalog
from modelserve.catalog.routing import label_of, routing_key_of
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import validate_infer_request
from modelserve.v2 import metadata as v2_metadata
from modelserve.v2.streaming import stream_infer

ROUTING_PARAMETERS = ("label", "routing_key")
EXTENSIONS = ["classification", "model_repository", "statistics", "binary_tensor_data"]


class GatewayServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        *,
        catalog: Catalog,
        routers: RouterClient,
        merger: RequestMerger,
        version: str,
        composites: CompositeCatalog | None = None,
    ) -> None:
        self._catalog = catalog
        self._composites = composites
        self._routers = routers
        self._merger = merger
        self._signatures = SignatureCache()
        self._version = version

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        if not self._catalog.synced.is_set():
            return pb.ServerReadyResponse(ready=False)
        try:
            answer = await self._routers.call(lambda s: s.ServerReady, request, context)
        except Exception:
            return pb.ServerReadyResponse(ready=False)
        return pb.ServerReadyResponse(ready=answer.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="modelserve", version=self._version, extensions=EXTENSIONS
        )

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        if self._composites and request.name in self._composites:
            self._composites.get(request.name, request.version)  # NOT_FOUND at the edge
            return await self._routers.call(lambda s: s.ModelReady, request, context)
        self._catalog.resolve(request.name, request.version)  # NOT_FOUND at the edge
        return await self._routers.call(lambda s: s.ModelReady, request, context)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        if self._composites and request.name in self._composites:
            return self._composites.model_metadata(request.name, request.version)
        model = self._catalog.get_model(request.name)
        return v2_metadata.model_metadata(
            model, self._catalog.resolve(request.name, request.version), caller_view=True
        )

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        if self._composites and request.name in self._composites:
            return self._composites.model_config(request.name, request.version)
        return v2_metadata.model_config(
            self._catalog.resolve(request.name, request.version), caller_view=True
        )

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        return await self._routers.call(lambda s: s.RepositoryIndex, request, context)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            self._catalog.resolve(request.name, request.version)
        return await self._routers.call(lambda s: s.ModelStatistics, request, context)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        if self._composites and request.model_name in self._composites:
            return await composite_requests.infer(self._composites, self._routers, request, context)
        key = routing_key_of(request, context.invocation_metadata())
        version = self._catalog.route(
            request.model_name, request.model_version, label_of(request), key
        )
        # The decision travels explicitly, so the router cannot pick differently (a split
        # without a key is random) and the version validated here is the one that answers.
        request.model_version = str(version.version)
        signature = self._signatures.get(version)
        validate_infer_request(
            request, signature.inputs, signature.outputs, signature.max_batch_size
        )
        # Routing parameters did their work here; without them the request can be merged.
        for name in ROUTING_PARAMETERS:
            if name in request.parameters:
                del request.parameters[name]
        timeout = self._routers.deadline(context)
        # max_rows 0 sends the request alone: see Signature.mergeable.
        max_rows = signature.max_batch_size if signature.mergeable else 0
        return await self._merger.infer(request, version.version, max_rows, timeout)

    def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        return stream_infer(request_iterator, context, self.ModelInfer)
