"""Streaming under faults, on real brokers and the real suite: a consumer killed with SIGKILL
mid-batch while a second one is in the group, and the broker itself killed and restarted
mid-stream. In both, every event ends with exactly one result and none is lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
from streamsupport import (
    SHARED_NATS,
    SHARED_REDIS,
    broker,
    metric,
    nats_consumer_lag,
    nats_count,
    nats_publish,
    nats_records,
    nats_url,
    redis_records,
    redis_url,
    start_streamer,
    unique,
    xadd_events,
)
from test_e2e_streaming import assert_one_result_each, tabular_events
from testsupport import eventually

from modelserve.cli.suite import Suite

RECLAIM = ["--stream-reclaim-idle-ms", "1500"]


def pending_of(client: redis.Redis, stream: str, group: str) -> dict[str, int]:
    summary = client.xpending(stream, group)
    return {c["name"].decode(): int(c["pending"]) for c in summary.get("consumers") or ()}


async def test_a_consumer_killed_mid_batch_loses_nothing(suite: Suite, tmp_path: Path) -> None:
    client = redis.Redis.from_url(SHARED_REDIS)
    source, sink = unique("events"), unique("results")
    n = 1500
    payloads, inputs = tabular_events(n, source, seed=3)
    xadd_events(client, source, payloads)
    urls = {"source": redis_url(SHARED_REDIS, source), "sink": redis_url(SHARED_REDIS, sink)}
    gateway = suite.address("gateway")
    args = ["--max-batch", "32", "--max-in-flight", "4", *RECLAIM]
    first = await start_streamer(
        gateway, "tabular", **urls, group="g", consumer="first", workdir=tmp_path, args=args
    )
    second = None
    try:

        async def mid_stream() -> int:
            written = client.xlen(sink)
            pending = pending_of(client, source, "g").get("first", 0)
            assert 100 <= written < n - 200 and pending > 0, (written, pending)
            return pending

        await eventually(mid_stream, timeout=60, interval=0.005)
        first.kill()  # SIGKILL: no drain, its batches in flight stay pending on it
        orphaned = pending_of(client, source, "g").get("first", 0)
        assert orphaned > 0
        second = await start_streamer(
            gateway, "tabular", **urls, group="g", consumer="second", workdir=tmp_path, args=args
        )

        async def all_done() -> list[dict[str, Any]]:
            results = redis_records(client, sink)
            assert len(results) >= n, f"{len(results)} of {n}"
            assert client.xpending(source, "g")["pending"] == 0
            return results

        results = await eventually(all_done, timeout=90)
        assert metric(second, "modelserve_stream_reclaimed_total") >= orphaned
        assert second.terminate() == 0, second.log()
    finally:
        first.kill()
        if second is not None:
            second.kill()
    assert_one_result_each(results, set(inputs))
    assert len(results) == n
    assert pending_of(client, source, "g").get("first", 0) == 0  # claimed by the second


async def test_a_nats_consumer_killed_mid_batch_loses_nothing(suite: Suite, tmp_path: Path) -> None:
    source, sink = unique("events"), unique("results")
    n = 1500
    payloads, inputs = tabular_events(n, source, seed=6)
    await nats_publish(SHARED_NATS, source, payloads)
    urls = {"source": nats_url(SHARED_NATS, source), "sink": nats_url(SHARED_NATS, sink)}
    gateway = suite.address("gateway")
    args = ["--max-batch", "32", "--max-in-flight", "4", *RECLAIM]  # ack wait 1.5 s
    first = await start_streamer(
        gateway, "tabular", **urls, group="g", consumer="first", workdir=tmp_path, args=args
    )
    second = None
    try:

        async def mid_stream() -> None:
            written = await nats_count(SHARED_NATS, sink)
            unacked, _ = await nats_consumer_lag(SHARED_NATS, source, "g")
            assert 100 <= written < n - 200 and unacked > 0, (written, unacked)

        await eventually(mid_stream, timeout=60, interval=0.005)
        first.kill()  # SIGKILL: its unacked messages come back after the ack wait
        orphaned, _ = await nats_consumer_lag(SHARED_NATS, source, "g")
        assert orphaned > 0  # and only a redelivery to the second can ack them
        second = await start_streamer(
            gateway, "tabular", **urls, group="g", consumer="second", workdir=tmp_path, args=args
        )

        async def all_done() -> list[dict[str, Any]]:
            assert await nats_count(SHARED_NATS, sink) >= n
            assert await nats_consumer_lag(SHARED_NATS, source, "g") == (0, 0)
            return await nats_records(SHARED_NATS, sink)

        results = await eventually(all_done, timeout=90)
        assert second.terminate() == 0, second.log()
    finally:
        first.kill()
        if second is not None:
            second.kill()
    assert_one_result_each(results, set(inputs))
    assert len(results) == n


async def test_redis_restarted_mid_stream_loses_nothing(suite: Suite, tmp_path: Path) -> None:
    n = 600
    with broker("redis", tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        source, sink = unique("events"), unique("results")
        payloads, inputs = tabular_events(n, source, seed=4)
        xadd_events(client, source, payloads[: n // 2])
        streamer = await start_streamer(
            suite.address("gateway"), "tabular",
            source=redis_url(server.url, source), sink=redis_url(server.url, sink),
            group="g", workdir=tmp_path, args=["--max-batch", "8", *RECLAIM],
        )  # fmt: skip
        try:

            async def some() -> None:  # mid-stream: some results out, most events not
                assert 20 <= client.xlen(sink) < n // 2 - 50

            await eventually(some, timeout=60, interval=0.01)
            server.kill()
            server.start()  # same port, same AOF: the stream and the group survive
            client = redis.Redis.from_url(server.url)
            xadd_events(client, source, payloads[n // 2 :])

            async def all_done() -> list[dict[str, Any]]:
                results = redis_records(client, sink)
                assert len(results) >= n, f"{len(results)} of {n}"
                assert client.xpending(source, "g")["pending"] == 0
                return results

            results = await eventually(all_done, timeout=90)
            assert streamer.proc.poll() is None, "the consumer rode the restart out in-process"
            assert streamer.terminate() == 0, streamer.log()
        finally:
            streamer.kill()
    assert_one_result_each(results, set(inputs))
    assert len(results) == n


async def test_nats_restarted_mid_stream_loses_nothing(suite: Suite, tmp_path: Path) -> None:
    n = 600
    with broker("nats", tmp_path) as server:
        source, sink = unique("events"), unique("results")
        payloads, inputs = tabular_events(n, source, seed=5)
        await nats_publish(server.url, source, payloads[: n // 2])
        streamer = await start_streamer(
            suite.address("gateway"), "tabular",
            source=nats_url(server.url, source), sink=nats_url(server.url, sink),
            group="g", workdir=tmp_path, args=["--max-batch", "8", *RECLAIM],
        )  # fmt: skip
        try:

            async def some() -> None:  # mid-stream: some results out, most events not
                assert 20 <= await nats_count(server.url, sink) < n // 2 - 50

            await eventually(some, timeout=60, interval=0.01)
            server.kill()
            server.start()  # same port, same JetStream store
            await nats_publish(server.url, source, payloads[n // 2 :])

            async def all_done() -> list[dict[str, Any]]:
                results = await nats_records(server.url, sink)
                assert len(results) >= n, f"{len(results)} of {n}"
                return results

            results = await eventually(all_done, timeout=90)
            assert streamer.proc.poll() is None, "the consumer rode the restart out in-process"
            assert streamer.terminate() == 0, streamer.log()
        finally:
            streamer.kill()
    assert_one_result_each(results, set(inputs))
    assert len(results) == n
