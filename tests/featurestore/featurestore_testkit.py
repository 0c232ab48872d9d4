"""Views and helpers shared by the feature store tests."""

from __future__ import annotations

import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import numpy as np

from featurestore.catalog import ViewCatalog
from featurestore.featurestore_servicer import FeatureStoreServicer
from featurestore.online import OnlineFeatures
from featurestore.online_store import OnlineStore
from featurestore.views import Feature, FeatureView
from modelserve.interceptors import ErrorInterceptor
from modelserve.proto.modelserve.v1 import featurestore_pb2_grpc


def user_view(
    *,
    name: str = "users",
    ttl_seconds: int = 0,
    entity_type: str = "STRING",
    extra: tuple[Feature, ...] = (),
) -> FeatureView:
    """A view with a scalar FP32 (default 1.5), an INT64 [3] vector and a BYTES feature."""
    return FeatureView(
        name=name,
        entity_key="user_id",
        entity_type=entity_type,
        features=(
            Feature("score", "FP32", (), default_raw=struct.pack("<f", 1.5)),
            Feature("counts", "INT64", (3,)),
            Feature("country", "BYTES", ()),
            *extra,
        ),
        ttl_seconds=ttl_seconds,
    )


def user_columns(count: int, base: float = 0.0) -> dict[str, np.ndarray]:
    """Columns for ``count`` entities of ``user_view``; values derive from ``base`` and i."""
    country = np.empty(count, dtype=object)
    country[:] = [f"c{base:g}-{i}".encode() for i in range(count)]
    return {
        "score": (np.arange(count, dtype=np.float32) + np.float32(base)),
        "counts": (np.arange(count * 3, dtype=np.int64) + int(base)).reshape(count, 3),
        "country": country,
    }


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@asynccontextmanager
async def served(catalog: ViewCatalog, store: OnlineStore) -> AsyncIterator[tuple[Any, Any]]:
    """(server, stub): a FeatureStore on 127.0.0.1:0 over ``catalog`` and ``store``, with the
    real error interceptor. Stopping the server early (mid-run) is fine."""
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    featurestore_pb2_grpc.add_FeatureStoreServicer_to_server(
        FeatureStoreServicer(
            catalog=catalog, online=OnlineFeatures(catalog=catalog, online_store=store)
        ),
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield server, featurestore_pb2_grpc.FeatureStoreStub(channel)  # type: ignore[no-untyped-call]
    finally:
        await channel.close()
        await server.stop(None)
