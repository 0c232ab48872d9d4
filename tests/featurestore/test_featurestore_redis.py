"""Redis backend: one MGET per lookup, one atomic script per write batch, expiry, outages."""

from __future__ import annotations

import socket

import pytest
import redis.asyncio as aioredis
from featurestore_testkit import now_ms, user_columns, user_view

from featurestore.catalog import ViewCatalog
from featurestore.online import OnlineFeatures, ValueStatus
from featurestore.redis_store import RedisClientConfig, RedisOnlineStore, make_client
from modelserve.errors import UnavailableError


async def _calls(client: aioredis.Redis, command: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.fixture
def online(catalog: ViewCatalog, redis_store: RedisOnlineStore) -> OnlineFeatures:
    return OnlineFeatures(catalog=catalog, online_store=redis_store)


async def test_lookup_of_1000_keys_is_one_mget(
    catalog: ViewCatalog, online: OnlineFeatures, redis_client: aioredis.Redis
) -> None:
    await catalog.apply(user_view())
    keys = [f"u{i}" for i in range(1000)]
    await online.write("users", keys[::2], user_columns(500))
    await online.read("users", [], keys[:1])  # connection made, outside the measurement

    before = {c: await _calls(redis_client, c) for c in ("mget", "get", "evalsha")}
    columns = await online.read("users", [], keys)
    after = {c: await _calls(redis_client, c) for c in ("mget", "get", "evalsha")}

    assert after["mget"] - before["mget"] == 1
    assert after["get"] == before["get"] and after["evalsha"] == before["evalsha"]
    assert columns[0].status.tolist() == [ValueStatus.PRESENT, ValueStatus.MISSING] * 500


async def test_write_of_1000_rows_is_one_atomic_batch(
    catalog: ViewCatalog, online: OnlineFeatures, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    await catalog.apply(user_view())
    await online.write("users", ["warm"], user_columns(1))  # loads the script once
    keys = [f"u{i}" for i in range(1000)]

    before = {c: await _calls(redis_client, c) for c in ("evalsha", "mset", "set")}
    assert await online.write("users", keys, user_columns(1000)) == 1000
    after = {c: await _calls(redis_client, c) for c in ("evalsha", "mset", "set")}

    assert after["evalsha"] - before["evalsha"] == 1  # one round trip for the batch
    assert after["mset"] - before["mset"] == 1  # landing in one MSET inside the script
    assert after["set"] == before["set"]
    stored = await redis_client.mget([f"{redis_prefix}users:{k}" for k in keys])
    assert all(value is not None for value in stored)


async def test_a_failing_batch_writes_nothing(
    catalog: ViewCatalog, online: OnlineFeatures, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    await catalog.apply(user_view())
    # A foreign value under the last key makes the script refuse the batch (after reading
    # 999 keys it would have written): none of the batch may land.
    await redis_client.set(f"{redis_prefix}users:u999", b"not a feature row")
    keys = [f"u{i}" for i in range(1000)]
    with pytest.raises(aioredis.ResponseError, match="is not a feature row"):
        await online.write("users", keys, user_columns(1000))
    assert await redis_client.exists(*[f"{redis_prefix}users:{k}" for k in keys[:999]]) == 0


async def test_keys_expire_long_after_the_ttl(
    catalog: ViewCatalog, online: OnlineFeatures, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    await catalog.apply(user_view(ttl_seconds=1))
    await catalog.apply(user_view(name="forever"))
    await online.write("users", ["a"], user_columns(1), [now_ms() - 3_600_000])
    await online.write("forever", ["a"], user_columns(1))

    # Far beyond the 1 s ttl (at least a day): an hour-old value still reads as EXPIRED.
    assert await redis_client.pttl(f"{redis_prefix}users:a") > 86_000_000
    assert await redis_client.pttl(f"{redis_prefix}forever:a") == -1  # no ttl, no expiry
    (score,) = await online.read("users", ["score"], ["a"])
    assert score.status.tolist() == [ValueStatus.EXPIRED]


def test_client_defaults_follow_reliability_md() -> None:
    client = make_client("redis://127.0.0.1:6379/0", RedisClientConfig())
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_connect_timeout"] == 0.1
    assert kwargs["socket_timeout"] == 0.05
    assert kwargs["health_check_interval"] == 10
    retry = kwargs["retry"]
    assert retry.get_retries() == 2
    assert (retry._backoff._cap, retry._backoff._base) == (0.5, 0.01)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_redis_is_unavailable_then_breaks(catalog: ViewCatalog) -> None:
    config = RedisClientConfig(retries=0, breaker_failures=2, breaker_open_s=60)
    store = RedisOnlineStore(f"redis://127.0.0.1:{_closed_port()}/0", client_config=config)
    online = OnlineFeatures(catalog=catalog, online_store=store)
    await catalog.apply(user_view())
    try:
        for _ in range(2):
            with pytest.raises(UnavailableError, match="did not answer in time; retry"):
                await online.read("users", [], ["a"])
        # Open: fails fast without touching the network, and says so.
        with pytest.raises(UnavailableError, match="2 consecutive failures"):
            await online.read("users", [], ["a"])
    finally:
        await store.close()


async def test_a_damaged_row_reads_as_missing_and_the_rest_is_served(
    catalog: ViewCatalog, online: OnlineFeatures, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    await catalog.apply(user_view())
    await online.write("users", ["good"], user_columns(1, base=3))
    await redis_client.set(f"{redis_prefix}users:bad", b"\x01garbage")
    (score,) = await online.read("users", ["score"], ["bad", "good"])
    assert score.status.tolist() == [ValueStatus.MISSING, ValueStatus.PRESENT]
    assert score.values.tolist() == [1.5, 3.0]
