"""Protobuf <-> domain for the feature store: the only module that knows both shapes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from featurestore.catalog import MaterializationState
from featurestore.online import FeatureColumn
from featurestore.views import MAX_FEATURES, Feature, FeatureSource, FeatureView
from modelserve.errors import InvalidArgumentError
from modelserve.proto.modelserve.v1 import common_pb2, featurestore_pb2
from modelserve.tensors import from_proto_tensor, to_proto_tensor


def view_from_proto(msg: featurestore_pb2.FeatureView) -> FeatureView:
    """A validated domain view (INVALID_ARGUMENT naming what is wrong)."""
    if len(msg.features) > MAX_FEATURES:  # bounded before building anything per feature
        raise InvalidArgumentError(
            f"feature view {msg.name[:128]!r}: at most {MAX_FEATURES} features, "
            f"got {len(msg.features)}"
        )
    return FeatureView(
        name=msg.name,
        entity_key=msg.entity_key,
        entity_type=msg.entity_type,
        features=tuple(
            Feature(
                name=f.name,
                datatype=f.datatype,
                shape=tuple(f.shape),
                default_raw=f.default_raw,
            )
            for f in msg.features
        ),
        ttl_seconds=msg.ttl_seconds,
        description=msg.description,
        source=_source_from_proto(msg.source) if msg.HasField("source") else None,
    )


def _source_from_proto(msg: featurestore_pb2.FeatureSource) -> FeatureSource:
    return FeatureSource(
        format=msg.format,
        path=msg.path,
        event_timestamp_column=msg.event_timestamp_column,
        created_timestamp_column=msg.created_timestamp_column,
    )


def view_to_proto(view: FeatureView) -> featurestore_pb2.FeatureView:
    msg = featurestore_pb2.FeatureView(
        name=view.name,
        entity_key=view.entity_key,
        entity_type=view.entity_type,
        features=[
            featurestore_pb2.Feature(
                name=f.name, datatype=f.datatype, shape=f.shape, default_raw=f.default_raw
            )
            for f in view.features
        ],
        ttl_seconds=view.ttl_seconds,
        description=view.description,
    )
    if view.source is not None:
        msg.source.CopyFrom(
            featurestore_pb2.FeatureSource(
                format=view.source.format,
                path=view.source.path,
                event_timestamp_column=view.source.event_timestamp_column,
                created_timestamp_column=view.source.created_timestamp_column,
            )
        )
    return msg


def state_to_proto(state: MaterializationState) -> featurestore_pb2.MaterializationState:
    return featurestore_pb2.MaterializationState(
        view=state.view,
        watermark_unix_ms=state.watermark_ms,
        committed_unix_ms=state.committed_ms,
        rows_written=state.rows_written,
    )


def columns_from_proto(tensors: Sequence[common_pb2.Tensor]) -> dict[str, np.ndarray]:
    """Feature name -> column; each tensor checked by the shared codec (size, BYTES prefixes)."""
    columns: dict[str, np.ndarray] = {}
    for tensor in tensors:
        if tensor.name in columns:
            raise InvalidArgumentError(f"feature {tensor.name[:128]!r} is given more than once")
        columns[tensor.name] = from_proto_tensor(tensor)
    return columns


def lookup_to_proto(columns: Sequence[FeatureColumn]) -> featurestore_pb2.GetOnlineFeaturesResponse:
    return featurestore_pb2.GetOnlineFeaturesResponse(
        results=[
            featurestore_pb2.FeatureResult(
                values=_tensor(c.feature, c.values), status=c.status.tolist()
            )
            for c in columns
        ]
    )


def _tensor(feature: Feature, values: np.ndarray) -> common_pb2.Tensor:
    tensor = to_proto_tensor(feature.name, values)
    # An empty BYTES column has no element to infer from; the view says what it is.
    tensor.datatype = feature.datatype
    return tensor
