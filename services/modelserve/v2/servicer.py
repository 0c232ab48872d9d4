"""The one V2 servicer (inference.GRPCInferenceService), shared by gateway, router and worker.

Every RPC is implemented here once: decoding the call into a ``Call`` (deadline and forwarded
metadata, read once), composite dispatch, NOT_FOUND for unknown models and versions before any
work, metadata and config answers from the catalog replica, the server version, and streaming.
What differs between services is the data plane (``DataPlane``): plain Python objects that
take V2 messages and a ``Call`` and are unit-testable without a server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from grpc import aio

import modelserve
from modelserve.calls import Call
from modelserve.catalog.composite_replica import CompositeCatalog
from modelserve.catalog.replica import Catalog
from modelserve.deadlines import EdgeDeadlines
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import composite_pb2, registry_pb2
from modelserve.server import Runtime
from modelserve.v2 import composite_metadata, metadata
from modelserve.v2.streaming import stream_infer


class DataPlane(Protocol):
    """What one service does with V2 requests once the servicer has decoded and checked them."""

    @property
    def server_name(self) -> str:
        """ServerMetadata.name."""

    @property
    def extensions(self) -> Sequence[str]:
        """ServerMetadata.extensions: only what this service implements."""

    @property
    def caller_view(self) -> bool:
        """Metadata shows the caller's inputs (feature inputs the router fills left out)."""

    @property
    def catalog(self) -> Catalog: ...

    @property
    def composites(self) -> CompositeCatalog | None:
        """The composites this service answers (None: it answers none)."""

    @property
    def edge(self) -> EdgeDeadlines | None:
        """The public edge clamps deadlines; inner hops take them as sent."""

    async def server_ready(self, call: Call) -> bool: ...

    async def model_ready(
        self, request: pb.ModelReadyRequest, version: registry_pb2.ModelVersion, call: Call
    ) -> bool: ...

    async def composite_ready(
        self, request: pb.ModelReadyRequest, composite: composite_pb2.Composite, call: Call
    ) -> bool: ...

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, call: Call
    ) -> pb.RepositoryIndexResponse: ...

    async def statistics(
        self,
        request: pb.ModelStatisticsRequest,
        version: registry_pb2.ModelVersion | None,
        call: Call,
    ) -> pb.ModelStatisticsResponse: ...

    async def repository_load(self, request: pb.RepositoryModelLoadRequest, call: Call) -> None:
        """The model_repository extension (UnimplementedError where not served)."""

    async def repository_unload(
        self, request: pb.RepositoryModelUnloadRequest, call: Call
    ) -> None: ...

    async def infer(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse: ...

    async def infer_composite(
        self, request: pb.ModelInferRequest, composite: composite_pb2.Composite, call: Call
    ) -> pb.ModelInferResponse: ...


class V2Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        plane: DataPlane,
        *,
        version: str = modelserve.__version__,
        stream_idle_timeout_s: float | None = None,
    ) -> None:
        self._plane = plane
        self._stream_idle_timeout_s = stream_idle_timeout_s
        self._catalog = plane.catalog
        self._composites = plane.composites
        self._edge = plane.edge
        self._version = version

    def _call(self, context: aio.ServicerContext) -> Call:
        return Call.incoming(context, self._edge)

    def _composite(self, name: str, version: str) -> composite_pb2.Composite | None:
        """The composite ``name`` (NOT_FOUND for a wrong revision), or None for a model."""
        if self._composites is None or name not in self._composites:
            return None
        return self._composites.get(name, version)

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        if not self._catalog.synced.is_set():
            return pb.ServerReadyResponse(ready=False)
        return pb.ServerReadyResponse(ready=await self._plane.server_ready(self._call(context)))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=self._plane.server_name,
            version=self._version,
            extensions=list(self._plane.extensions),
        )

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        composite = self._composite(request.name, request.version)
        call = self._call(context)
        if composite is not None:
            ready = await self._plane.composite_ready(request, composite, call)
        else:
            version = self._catalog.resolve(request.name, request.version)
            # Unloaded: not ready at once, even while workers are still letting it go.
            ready = not self._catalog.is_unloaded(request.name) and await self._plane.model_ready(
                request, version, call
            )
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        composite = self._composite(request.name, request.version)
        if composite is not None:
            assert self._composites is not None
            return composite_metadata.model_metadata(
                composite, self._composites.signature(composite.name)
            )
        return metadata.model_metadata(
            self._catalog.get_model(request.name),
            self._catalog.resolve(request.name, request.version),
            caller_view=self._plane.caller_view,
        )

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        composite = self._composite(request.name, request.version)
        if composite is not None:
            assert self._composites is not None
            return composite_metadata.model_config(
                composite, self._composites.signature(composite.name), self._composites
            )
        return metadata.model_config(
            self._catalog.resolve(request.name, request.version),
            caller_view=self._plane.caller_view,
        )

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        return await self._plane.repository_index(request, self._call(context))

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        # The client's own deadline, not the edge's inference clamp: a load may take longer
        # than any inference (the plane caps it).
        await self._plane.repository_load(request, self._repository_call(context))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self._plane.repository_unload(request, self._repository_call(context))
        return pb.RepositoryModelUnloadResponse()

    def _repository_call(self, context: aio.ServicerContext) -> Call:
        return Call.incoming(context)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        version = self._catalog.resolve(request.name, request.version) if request.name else None
        return await self._plane.statistics(request, version, self._call(context))

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        return await self._infer(request, Call.incoming(context, self._edge))

    async def _infer(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse:
        composites = self._composites
        if composites is not None and request.model_name in composites:
            composite = composites.get(request.model_name, request.model_version)
            return await self._plane.infer_composite(request, composite, call)
        return await self._plane.infer(request, call)

    def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # One Call for the stream: its deadline and metadata are the stream's.
        call = self._call(context)
        return stream_infer(
            request_iterator,
            lambda request: self._infer(request, call),
            idle_timeout_s=self._stream_idle_timeout_s,
        )


def serve_v2(runtime: Runtime, plane: DataPlane) -> V2Servicer:
    """Register the V2 servicer over ``plane`` on the service's server."""
    servicer = V2Servicer(
        plane, stream_idle_timeout_s=runtime.settings.stream_idle_timeout_seconds or None
    )
    runtime.add_service(
        pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        pb_grpc.add_GRPCInferenceServiceServicer_to_server,
        servicer,
    )
    return servicer
