"""T33: the online store's Redis stopped and started again under load, on a private
redis-server (never the shared one): with the production client settings (50 ms socket
timeout, 2 retries, the breaker), every read while it is down fails fast with UNAVAILABLE
instead of running into the caller's deadline, reads succeed again soon after it is back, on
the same store object (no process restart), and no connection is left checked out."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from featurestore_testkit import user_columns, user_view
from private_redis import PrivateRedis

from featurestore.catalog import ViewCatalog
from featurestore.online import OnlineFeatures, ValueStatus
from featurestore.redis_store import RedisClientConfig, RedisOnlineStore
from modelserve.errors import UnavailableError

DEADLINE_S = 2.0  # what a caller would give one fetch; a read that needs it failed slowly
READERS = 8
DOWN_S = 2.0
BACK_WITHIN_S = 5.0  # RELIABILITY-CASES T33: baseline <= 5 s after Redis returns

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_a_redis_restart_under_load_fails_fast_and_recovers_without_a_restart(
    catalog: ViewCatalog, redis_server: PrivateRedis
) -> None:
    store = RedisOnlineStore(redis_server.url, client_config=RedisClientConfig())
    online = OnlineFeatures(catalog=catalog, online_store=store)
    await catalog.apply(user_view())
    await online.write("users", ["u1"], user_columns(1))
    # (when it ended, outcome, seconds it took)
    results: list[tuple[float, str, float]] = []
    stop = asyncio.Event()
    recovered = asyncio.Event()  # a success after Redis came back
    back = [0.0]

    async def reader() -> None:
        while not stop.is_set():
            began = time.monotonic()
            try:
                (score,) = await asyncio.wait_for(
                    online.read("users", ["score"], ["u1"]), DEADLINE_S
                )
                # After the restart the row is gone (no persistence): MISSING is an answer.
                answered = score.status[0] in (ValueStatus.PRESENT, ValueStatus.MISSING)
                outcome = "ok" if answered else "?"
            except UnavailableError:
                outcome = "unavailable"
            except TimeoutError:
                outcome = "deadline"
            now = time.monotonic()
            results.append((now, outcome, now - began))
            if outcome == "ok" and back[0] and now > back[0]:
                recovered.set()
            await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(reader()) for _ in range(READERS)]
    try:
        await asyncio.sleep(0.5)
        down_at = time.monotonic()
        await asyncio.to_thread(redis_server.stop)
        await asyncio.sleep(DOWN_S)
        # Reads may succeed as soon as the new server listens, before start() returns (it
        # waits for PING): "down" ends when the restart begins, not when start() is back.
        restart_at = time.monotonic()
        await asyncio.to_thread(redis_server.start)
        back_at = back[0] = time.monotonic()
        await asyncio.wait_for(recovered.wait(), 30)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    try:
        outcomes = {o for _, o, _ in results}
        assert "deadline" not in outcomes, "a read waited for the caller's deadline"
        assert outcomes <= {"ok", "unavailable"}, outcomes
        down = [(t, o, took) for t, o, took in results if down_at + 0.2 < t < restart_at]
        assert down and {o for _, o, _ in down} == {"unavailable"}, down[:5]
        first_ok = min(t for t, o, _ in results if t > back_at and o == "ok")
        recovery = first_ok - back_at
        slowest_failure = max(took for _, o, took in results if o == "unavailable")
        print(
            f"T33: {len(results)} reads, {len(down)} while down (slowest failure "
            f"{slowest_failure * 1000:.0f} ms), success {recovery:.2f} s after Redis returned"
        )
        assert recovery <= BACK_WITHIN_S, f"success only {recovery:.2f} s after Redis returned"
        # Reads after the return succeed on the same client: nothing stuck in the pool.
        assert all(o == "ok" for t, o, _ in results if t > first_ok + 0.2)
        pool = store._client.connection_pool  # redis-py's pool: what is still checked out
        assert not pool._in_use_connections, pool._in_use_connections  # type: ignore[attr-defined]
    finally:
        await store.close()
