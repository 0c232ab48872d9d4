"""The two adapters on the shared real brokers (unique stream names per test): reads, acks,
redelivery (JetStream ack wait) and claims (Redis XAUTOCLAIM) with their delivery counts,
lag, leaving the group, and sinks that write once per idempotency key."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis
from testsupport import eventually

from streamer.brokers import Record, open_sink, open_source

REDIS = "redis://127.0.0.1:6379/0"
NATS = "nats://127.0.0.1:4222"


def tag() -> str:
    return uuid.uuid4().hex[:10]


async def test_redis_claims_a_dead_consumers_entries_with_their_delivery_count() -> None:
    stream = f"in-{tag()}"
    url = f"{REDIS}?stream={stream}"
    dead = open_source(url, group="g", consumer="dead", reclaim_idle_ms=100)
    alive = open_source(url, group="g", consumer="alive", reclaim_idle_ms=100)
    client = aioredis.Redis.from_url(REDIS)
    try:
        await dead.start()
        await alive.start()
        for i in range(5):
            await client.xadd(stream, {"data": f"e{i}".encode()})
        taken = await dead.read(3, 0.1)
        assert [d.data for d in taken] == [b"e0", b"e1", b"e2"]
        assert [d.deliveries for d in taken] == [1, 1, 1]
        mine = await alive.read(10, 0.1)
        assert [d.data for d in mine] == [b"e3", b"e4"]  # new entries go to the living
        await alive.ack(mine)
        assert await alive.reclaim(10) == []  # not idle long enough yet

        async def claimed() -> list[str]:
            got = await alive.reclaim(10)
            assert got
            return [f"{d.data!r}:{d.deliveries}" for d in got]

        assert await eventually(claimed) == ["b'e0':2", "b'e1':2", "b'e2':2"]
        lag = await alive.lag()
        assert lag is not None and (lag.pending, lag.undelivered) == (3, 0)
        await dead.leave()  # holds nothing now (claimed): leaves the group
        await alive.leave()  # holds 3: stays, so nobody loses them
        names = {c["name"] for c in await client.xinfo_consumers(stream, "g")}
        assert names == {b"alive"}
    finally:
        for s in (dead, alive):
            await s.close()
        await client.aclose()


async def test_redis_sink_writes_each_key_once_with_an_approximate_maxlen() -> None:
    stream = f"out-{tag()}"
    sink = open_sink(f"{REDIS}?stream={stream}&maxlen=1000", dedupe_ttl_s=30, maxlen=5)
    client = aioredis.Redis.from_url(REDIS)
    try:
        await sink.start()
        assert await sink.write([Record("a", b"1"), Record("b", b"2")]) == [True, True]
        assert await sink.write([Record("a", b"other"), Record("c", b"3")]) == [False, True]
        assert [f[b"data"] for _, f in await client.xrange(stream)] == [b"1", b"2", b"3"]
        ttl = await client.ttl(f"{{{stream}}}:dedupe:a")
        assert 0 < ttl <= 30
    finally:
        await sink.close()
        await client.aclose()


async def test_jetstream_redelivers_after_the_ack_wait_and_counts_deliveries() -> None:
    name = f"IN-{tag()}"
    url = f"{NATS}?stream={name}&subject={name}.ev"
    source = open_source(url, group="g", consumer="c", reclaim_idle_ms=500)
    sink = open_sink(url.replace(name, name + "-OUT"), dedupe_ttl_s=60, maxlen=0)
    try:
        await source.start()
        await sink.start()
        import nats

        nc = await nats.connect(NATS)
        js = nc.jetstream()
        for i in range(3):
            await js.publish(f"{name}.ev", f"e{i}".encode())
        await nc.close()
        first = await source.read(3, 1.0)
        assert [d.data for d in first] == [b"e0", b"e1", b"e2"]
        await source.ack(first[:2])  # e2 is never acked: its consumer "died"

        async def again() -> list[tuple[bytes | None, int]]:
            got = await source.read(3, 0.2)
            assert got
            return [(d.data, d.deliveries) for d in got]

        assert await eventually(again) == [(b"e2", 2)]
        lag = await source.lag()
        assert lag is not None and lag.undelivered == 0 and lag.pending == 1
        assert await sink.write([Record("x", b"1"), Record("y", b"2")]) == [True, True]
        assert await sink.write([Record("x", b"again")]) == [False]  # Nats-Msg-Id window
        await source.leave()
    finally:
        await source.close()
        await sink.close()
        await asyncio.sleep(0)
