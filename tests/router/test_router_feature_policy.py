"""T33's per-model policy: a version whose feature store cannot answer (its Redis killed and
started again) is served with its ``fallback_values`` (fail open) or refused UNAVAILABLE at
once (fail closed, the default), both well within the caller's deadline; both enrich from the
store again soon after Redis returns, with no restart of anything.

Real parts: a redis-server of the test's own on a free port (never the shared 6379), the
featurestore's RedisOnlineStore with the production client settings (50 ms socket timeout,
retries, breaker) behind a real FeatureStore gRPC server, and the router's FeatureClient and
Enricher over a real channel."""

from __future__ import annotations

import asyncio
import shutil
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from private_redis import PrivateRedis
from prometheus_client import REGISTRY
from router_testkit import call_within, spec, version
from testsupport import eventually

from featurestore.catalog import ViewCatalog
from featurestore.featurestore_servicer import FeatureStoreServicer
from featurestore.online import OnlineFeatures
from featurestore.redis_store import RedisClientConfig, RedisOnlineStore
from featurestore.views import Feature, FeatureView
from modelserve.channels import EndpointSet
from modelserve.errors import DeadlineExceededError, UnavailableError
from modelserve.interceptors import ErrorInterceptor
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import featurestore_pb2_grpc, registry_pb2
from modelserve.tensors import decode_inputs, encode_inputs
from router.enrichment import Enricher
from router.feature_cache import FeatureCache
from router.features import FeatureClient

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")

DEADLINE_S = 2.0
FALLBACK = (0.0, -1.0, -1.0)
STORED = np.array([[1.5, 10.0, 11.0]], np.float32)


def scorer(number: int, fallback: tuple[float, ...]) -> registry_pb2.ModelVersion:
    return version(
        inputs=[spec("amount", "FP32", [-1, 1]), spec("user_features", "FP32", [-1, 3])],
        feature_inputs=[
            registry_pb2.FeatureInput(
                model_input="user_features",
                view="users",
                features=["spend", "history"],
                entity_input="user_id",
                fallback_values=fallback,
            )
        ],
        number=number,
    )


FAIL_CLOSED = scorer(1, ())
FAIL_OPEN = scorer(2, FALLBACK)


def request() -> pb.ModelInferRequest:
    out = pb.ModelInferRequest(model_name="scorer", id="r")
    encode_inputs(
        out,
        {
            "amount": np.ones((1, 1), np.float32),
            "user_id": np.array([[b"a"]], np.object_),
        },
    )
    return out


class Kit:
    def __init__(self, redis: PrivateRedis, online: OnlineFeatures, enricher: Enricher) -> None:
        self.redis, self.online, self.enricher = redis, online, enricher

    async def write_row(self) -> None:
        await self.online.write(
            "users",
            ["a"],
            {"spend": np.array([1.5], np.float32), "history": np.array([[10.0, 11.0]])},
        )

    async def features(self, v: registry_pb2.ModelVersion) -> np.ndarray:
        enriched = await self.enricher.enrich(request(), v, call_within(DEADLINE_S))
        return decode_inputs(enriched)["user_features"]


@pytest.fixture
async def kit(tmp_path: Path) -> AsyncIterator[Kit]:
    redis = PrivateRedis(tmp_path)
    redis.start()
    catalog = await ViewCatalog.open(tmp_path / "catalog.sqlite3")
    await catalog.apply(
        FeatureView(
            name="users",
            entity_key="user_id",
            entity_type="STRING",
            features=(
                Feature("spend", "FP32", (), default_raw=struct.pack("<f", 0.5)),
                Feature("history", "FP64", (2,)),
            ),
        )
    )
    store = RedisOnlineStore(redis.url, client_config=RedisClientConfig())  # production
    online = OnlineFeatures(catalog=catalog, online_store=store)
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    featurestore_pb2_grpc.add_FeatureStoreServicer_to_server(
        FeatureStoreServicer(catalog=catalog, online=online), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    endpoints = EndpointSet()
    await endpoints.update([f"127.0.0.1:{port}"])
    # No feature cache to speak of: every call asks the store (the case is about the store).
    cache = FeatureCache(ttl_s=0.001, max_entries=1)
    kit = Kit(
        redis,
        online,
        Enricher(features=FeatureClient(endpoints=endpoints, cache=cache, budget_cap_s=0.05)),
    )
    try:
        await kit.write_row()
        yield kit
    finally:
        await endpoints.close()
        await server.stop(None)
        await store.close()
        await catalog.close()
        redis.stop()


def fallbacks() -> float:
    return REGISTRY.get_sample_value("modelserve_feature_fallbacks_total", {"view": "users"}) or 0


async def timed(coro: Any) -> tuple[Any, float]:
    began = time.monotonic()
    try:
        return await coro, time.monotonic() - began
    except Exception as exc:
        return exc, time.monotonic() - began


async def test_a_redis_restart_applies_each_versions_policy_and_recovers_without_a_restart(
    kit: Kit,
) -> None:
    np.testing.assert_array_equal(await kit.features(FAIL_CLOSED), STORED)
    np.testing.assert_array_equal(await kit.features(FAIL_OPEN), STORED)

    await asyncio.to_thread(kit.redis.stop)
    before = fallbacks()
    slowest = 0.0
    for _ in range(20):  # breaker closed, then open: both answer the same way
        closed, took_closed = await timed(kit.features(FAIL_CLOSED))
        assert isinstance(closed, UnavailableError), closed
        opened, took_open = await timed(kit.features(FAIL_OPEN))
        assert isinstance(opened, np.ndarray), opened
        np.testing.assert_array_equal(opened, np.array([FALLBACK], np.float32))
        slowest = max(slowest, took_closed, took_open)
    assert fallbacks() - before == 20
    # Failed within the feature budget (50 ms) plus scheduling slack, never at the deadline.
    assert slowest < DEADLINE_S / 4, slowest
    # The caller's own deadline is not the store's failure: no fallback for it.
    with pytest.raises(DeadlineExceededError):
        await kit.enricher.enrich(request(), FAIL_OPEN, call_within(0.001))

    await asyncio.to_thread(kit.redis.start)
    back_at = time.monotonic()

    async def both_from_the_store() -> None:
        await kit.write_row()
        np.testing.assert_array_equal(await kit.features(FAIL_CLOSED), STORED)
        np.testing.assert_array_equal(await kit.features(FAIL_OPEN), STORED)

    await eventually(both_from_the_store, timeout=5.0)
    assert time.monotonic() - back_at <= 5.0
