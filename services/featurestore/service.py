"""Composition root of the feature store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from featurestore.catalog import ViewCatalog
from featurestore.featurestore_servicer import FeatureStoreServicer
from featurestore.online import OnlineFeatures
from featurestore.online_store import OnlineStore
from featurestore.redis_store import RedisClientConfig, RedisOnlineStore
from featurestore.settings import FeatureStoreSettings
from featurestore.sqlite_store import SqliteOnlineStore
from modelserve.proto.modelserve.v1 import featurestore_pb2, featurestore_pb2_grpc
from modelserve.server import Runtime


async def build(runtime: Runtime, settings: FeatureStoreSettings) -> None:
    data_dir = Path(settings.data_dir)
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    catalog = await ViewCatalog.open(data_dir / "featurestore.sqlite3")
    online: OnlineStore
    if settings.online_store == "redis":
        online = RedisOnlineStore(
            settings.redis_url,
            key_prefix=settings.redis_key_prefix,
            client_config=RedisClientConfig(socket_timeout_s=settings.redis_socket_timeout_seconds),
        )
    else:
        online = await SqliteOnlineStore.open(data_dir / "online.sqlite3")
    runtime.add_service(
        featurestore_pb2.DESCRIPTOR.services_by_name["FeatureStore"].full_name,
        featurestore_pb2_grpc.add_FeatureStoreServicer_to_server,
        FeatureStoreServicer(
            catalog=catalog, online=OnlineFeatures(catalog=catalog, online_store=online)
        ),
    )
    runtime.on_stop(online.close)
    runtime.on_stop(catalog.close)

    runtime.background(runtime.set_serving(True), "readiness")
