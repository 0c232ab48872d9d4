"""The FeatureStore gRPC service: decode, call the domain, encode. Nothing else.

Errors are domain exceptions; ``modelserve.interceptors.ErrorInterceptor`` maps them.
"""

from __future__ import annotations

from typing import Any

from grpc import aio

from featurestore import convert
from featurestore.catalog import ViewCatalog
from featurestore.online import (
    OnlineFeatures,
)
from modelserve.proto.modelserve.v1 import featurestore_pb2, featurestore_pb2_grpc


class FeatureStoreServicer(featurestore_pb2_grpc.FeatureStoreServicer):
    def __init__(self, *, catalog: ViewCatalog, online: OnlineFeatures) -> None:
        self._catalog = catalog
        self._online = online

    async def ApplyFeatureView(
        self,
        request: featurestore_pb2.FeatureView,
        context: aio.ServicerContext[Any, Any],
    ) -> featurestore_pb2.FeatureView:
        view = await self._catalog.apply(convert.view_from_proto(request))
        return convert.view_to_proto(view)

    async def GetFeatureView(
        self,
        request: featurestore_pb2.GetFeatureViewRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> featurestore_pb2.FeatureView:
        return convert.view_to_proto(self._catalog.get(request.name))

    async def ListFeatureViews(
        self,
        request: featurestore_pb2.ListFeatureViewsRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> featurestore_pb2.ListFeatureViewsResponse:
        views = [convert.view_to_proto(view) for view in self._catalog.views()]
        return featurestore_pb2.ListFeatureViewsResponse(views=views)

    async def WriteOnlineFeatures(
        self,
        request: featurestore_pb2.WriteOnlineFeaturesRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> featurestore_pb2.WriteOnlineFeaturesResponse:
        written = await self._online.write(
            request.view,
            request.entity_keys,
            convert.columns_from_proto(request.values),
            request.event_unix_ms,
        )
        return featurestore_pb2.WriteOnlineFeaturesResponse(written=written)

    async def GetOnlineFeatures(
        self,
        request: featurestore_pb2.GetOnlineFeaturesRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> featurestore_pb2.GetOnlineFeaturesResponse:
        columns = await self._online.read(request.view, request.features, request.entity_keys)
        return convert.lookup_to_proto(columns)

    async def GetMaterializationState(
        self,
        request: featurestore_pb2.GetMaterializationStateRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> featurestore_pb2.MaterializationState:
        return convert.state_to_proto(self._catalog.materialization(request.view))

    async def DeleteFeatureView(
        self,
        request: featurestore_pb2.DeleteFeatureViewRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> featurestore_pb2.DeleteFeatureViewResponse:
        # The catalog first: once the view is unknown no new write can land in its rows.
        await self._catalog.delete(request.name)
        deleted = await self._online.delete_view(request.name)
        return featurestore_pb2.DeleteFeatureViewResponse(deleted_rows=deleted)

    async def CommitMaterialization(
        self,
        request: featurestore_pb2.CommitMaterializationRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> featurestore_pb2.MaterializationState:
        state = await self._catalog.commit_materialization(
            request.view, request.up_to_unix_ms, request.rows_written
        )
        return convert.state_to_proto(state)
