"""Fixtures: a catalog on tmp_path, both online store backends, and a served FeatureStore.

Redis is the real one at 127.0.0.1:6379; every test gets its own key prefix and its keys are
deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from featurestore.catalog import DB_FILENAME, ViewCatalog
from featurestore.featurestore_servicer import FeatureStoreServicer
from featurestore.online import OnlineFeatures
from featurestore.online_store import OnlineStore
from featurestore.redis_store import RedisClientConfig, RedisOnlineStore
from featurestore.sqlite_store import SqliteOnlineStore
from modelserve.interceptors import ErrorInterceptor
from modelserve.proto.modelserve.v1 import featurestore_pb2_grpc

REDIS_URL = "redis://127.0.0.1:6379/0"
# The shared 2-core test machine can stall a call past RELIABILITY's 50 ms socket timeout;
# tests that are not about timeouts give Redis more room (the defaults have their own test).
RELAXED = RedisClientConfig(socket_timeout_s=2.0, socket_connect_timeout_s=1.0)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / DB_FILENAME


@pytest.fixture
async def catalog(db_path: Path) -> AsyncIterator[ViewCatalog]:
    catalog = await ViewCatalog.open(db_path)
    yield catalog
    await catalog.close()


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    """A plain client for inspecting Redis from tests."""
    client = aioredis.from_url(REDIS_URL, socket_timeout=5)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_prefix(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    prefix = f"test:featurestore:{uuid.uuid4().hex}:"
    yield prefix
    keys = [key async for key in redis_client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await redis_client.delete(*keys)


@pytest.fixture
async def redis_store(redis_prefix: str) -> AsyncIterator[RedisOnlineStore]:
    store = RedisOnlineStore(REDIS_URL, key_prefix=redis_prefix, client_config=RELAXED)
    yield store
    await store.close()


@pytest.fixture(params=["sqlite", "redis"])
async def online_store(
    request: pytest.FixtureRequest, db_path: Path, redis_prefix: str
) -> AsyncIterator[OnlineStore]:
    store: OnlineStore
    if request.param == "sqlite":
        store = await SqliteOnlineStore.open(db_path)
    else:
        store = RedisOnlineStore(REDIS_URL, key_prefix=redis_prefix, client_config=RELAXED)
    yield store
    await store.close()


@pytest.fixture
def online(catalog: ViewCatalog, online_store: OnlineStore) -> OnlineFeatures:
    return OnlineFeatures(catalog=catalog, online_store=online_store)


@pytest.fixture
async def stub(
    catalog: ViewCatalog, online_store: OnlineStore
) -> AsyncIterator[featurestore_pb2_grpc.FeatureStoreAsyncStub]:
    """A FeatureStore served on 127.0.0.1:0 with the real error interceptor."""
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    featurestore_pb2_grpc.add_FeatureStoreServicer_to_server(
        FeatureStoreServicer(
            catalog=catalog, online=OnlineFeatures(catalog=catalog, online_store=online_store)
        ),
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield featurestore_pb2_grpc.FeatureStoreStub(channel)  # type: ignore[misc]
    await channel.close()
    await server.stop(None)
