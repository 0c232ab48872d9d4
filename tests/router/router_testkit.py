"""Router test kit: a fake feature store (a small subclass of the generated servicer that
answers from a dict and records what it was asked) on a real grpc.aio server on port 0, and
registry versions built by hand. Imported by name: pytest puts this directory on sys.path."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
from grpc import aio

from modelserve.calls import Call
from modelserve.deadlines import Deadline
from modelserve.proto.modelserve.v1 import (
    common_pb2,
    featurestore_pb2,
    featurestore_pb2_grpc,
    registry_pb2,
)
from modelserve.tensors import to_proto_tensor


@dataclass
class FakeView:
    defaults: Mapping[str, np.ndarray]  # feature -> one entity's default value
    rows: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # key -> feature -> value
    int_keys: bool = False  # an INT64 view: keys must be base-10 integers


class FakeFeatureStore(featurestore_pb2_grpc.FeatureStoreServicer):
    def __init__(self, views: Mapping[str, FakeView]) -> None:
        self.views = dict(views)
        self.calls: list[featurestore_pb2.GetOnlineFeaturesRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.delay_s = 0.0

    async def GetOnlineFeatures(
        self, request: featurestore_pb2.GetOnlineFeaturesRequest, context: aio.ServicerContext
    ) -> featurestore_pb2.GetOnlineFeaturesResponse:
        self.calls.append(request)
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        view = self.views.get(request.view)
        if view is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown feature view {request.view!r}")
        assert view is not None
        for key in request.entity_keys:
            if view.int_keys and not key.lstrip("-").isdigit():
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"entity key {key!r}: expected an integer"
                )
        response = featurestore_pb2.GetOnlineFeaturesResponse()
        for name in request.features:
            if name not in view.defaults:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown feature {name!r}")
            values = [
                view.rows.get(k, {}).get(name, view.defaults[name]) for k in request.entity_keys
            ]
            present = [k in view.rows for k in request.entity_keys]
            response.results.add(
                values=to_proto_tensor(name, np.stack(values)),
                status=[1 if p else 2 for p in present],
            )
        return response


class FakeStoreServer:
    def __init__(self, store: FakeFeatureStore) -> None:
        self.store = store
        self.server = aio.server()
        featurestore_pb2_grpc.add_FeatureStoreServicer_to_server(store, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def spec(name: str, datatype: str, shape: Sequence[int]) -> common_pb2.TensorSpec:
    return common_pb2.TensorSpec(name=name, datatype=datatype, shape=list(shape))


def version(
    *,
    inputs: Sequence[common_pb2.TensorSpec],
    feature_inputs: Sequence[registry_pb2.FeatureInput] = (),
    cache: bool = False,
    model: str = "scorer",
    number: int = 1,
    sha256: str = "ab" * 32,
) -> registry_pb2.ModelVersion:
    return registry_pb2.ModelVersion(
        model=model,
        version=number,
        sha256=sha256,
        inputs=inputs,
        outputs=[spec("score", "FP32", [-1, 1])],
        config=registry_pb2.ServingConfig(
            max_batch_size=16,
            feature_inputs=feature_inputs,
            prediction_cache=registry_pb2.PredictionCache(enabled=cache, ttl_seconds=60),
        ),
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def call_within(remaining: float | None) -> Call:
    """A request in flight with ``remaining`` seconds of deadline (None: no deadline)."""
    return Call(Deadline.after(remaining))
