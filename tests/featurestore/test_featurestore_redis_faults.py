"""T39 with real Redis faults, on a private redis-server (never the shared one): every
FeatureStore handler that touches Redis, served with the real error interceptor.

- Redis refuses the command (an ACL that denies the read and the write script: NOPERM, a
  ``ResponseError`` no handler expects): INTERNAL "internal error (request-id R, ref X)";
  Redis's own text (user, command) stays in the log.
- Redis is gone (killed): UNAVAILABLE "online feature store (Redis) did not answer in time;
  retry", without its address or port.
Neither answer names a key, the key prefix, a host or a port."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from featurestore_testkit import served, user_columns, user_view
from private_redis import PrivateRedis

from featurestore.catalog import ViewCatalog
from featurestore.redis_store import RedisClientConfig, RedisOnlineStore
from modelserve.proto.modelserve.v1 import featurestore_pb2 as fs
from modelserve.tensors import to_proto_tensor

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")

PREFIX = "secret-prefix:"
RELAXED = RedisClientConfig(socket_timeout_s=2.0, socket_connect_timeout_s=1.0)


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def calls(stub: object, rid: str) -> list[tuple[str, object]]:
    """One call of each Redis-touching handler, with ``rid`` as x-request-id."""
    md = (("x-request-id", rid),)
    cols = user_columns(1)
    write = fs.WriteOnlineFeaturesRequest(
        view="users", entity_keys=["u1"], values=[to_proto_tensor(n, a) for n, a in cols.items()]
    )
    read = fs.GetOnlineFeaturesRequest(view="users", entity_keys=["u1"])
    return [
        ("GetOnlineFeatures", stub.GetOnlineFeatures(read, timeout=5, metadata=md)),  # type: ignore[attr-defined]
        ("WriteOnlineFeatures", stub.WriteOnlineFeatures(write, timeout=5, metadata=md)),  # type: ignore[attr-defined]
    ]


def assert_clean(details: str, port: int) -> None:
    for leak in (PREFIX, "u1", "users:", "127.0.0.1", "localhost", str(port), "NOPERM",
                 "mget", "evalsha", "default", "Traceback", ".py"):  # fmt: skip
        assert leak not in details, (leak, details)


async def test_a_command_redis_refuses_is_internal_with_the_request_id_only(
    catalog: ViewCatalog, redis_server: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisOnlineStore(redis_server.url, key_prefix=PREFIX, client_config=RELAXED)
    await catalog.apply(user_view())
    admin = aioredis.from_url(redis_server.url)
    try:
        # The default user may connect and ping, but not read or run the write script.
        await admin.execute_command("ACL", "SETUSER", "default", "-mget", "-evalsha", "-eval")
        async with served(catalog, store) as (_server, stub):
            for name, call in calls(stub, f"t39-{PREFIX[:6]}"):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call  # type: ignore[misc]
                details = err.value.details() or ""
                assert err.value.code() == grpc.StatusCode.INTERNAL, (name, details)
                assert re.fullmatch(
                    r"internal error \(request-id t39-secret, ref [0-9a-f]{12}\)", details
                ), (name, details)
                assert_clean(details.replace("t39-secret", ""), redis_server.port)
    finally:
        await admin.aclose()
        await store.close()
    assert "NoPermissionError" in caplog.text  # the full detail went to the log


async def test_a_redis_that_is_gone_is_unavailable_without_its_address(
    catalog: ViewCatalog, redis_server: PrivateRedis
) -> None:
    store = RedisOnlineStore(redis_server.url, key_prefix=PREFIX, client_config=RELAXED)
    await catalog.apply(user_view())
    try:
        async with served(catalog, store) as (_server, stub):
            redis_server.stop()
            for name, call in calls(stub, "t39-gone"):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call  # type: ignore[misc]
                details = err.value.details() or ""
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, (name, details)
                assert "retry" in details, details
                assert_clean(details, redis_server.port)
    finally:
        await store.close()
