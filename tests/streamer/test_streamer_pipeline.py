"""The consumer loop on a real Redis against a fake gateway: acks only after the write,
backpressure (reading stops at max_in_flight batches), retries of transient codes then a dead
letter, permanent codes dead-lettered at once, redelivered-too-often events dead-lettered
unscored, an ack lost after the write never yields a second result, and SIGTERM's drain."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from fake_gateway import FakeGateway, start_fake_gateway
from prometheus_client import REGISTRY
from testsupport import eventually

from modelserve.channels import EndpointSet
from streamer.brokers import BrokerError, Delivery
from streamer.events import ModelRef
from streamer.pipeline import Pipeline, PipelineConfig
from streamer.redis_streams import RedisStreamSink, RedisStreamSource
from streamer.scorer import GatewayScorer
from streamer.urls import parse

REDIS = "redis://127.0.0.1:6379/0"
LABELS = {"group": "g", "consumer": "c1"}


@pytest.fixture(scope="module")
async def gateway() -> AsyncIterator[tuple[FakeGateway, str]]:
    server, fake, address = await start_fake_gateway()
    yield fake, address
    await server.stop(0)


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(REDIS)
    yield c
    await c.aclose()


@dataclass
class Rig:
    pipeline: Pipeline
    task: asyncio.Task[None]
    source: str
    sink: str
    dlq: str
    endpoints: EndpointSet

    async def stop(self) -> None:
        await self.pipeline.drain()
        await self.pipeline.close()
        await self.task
        await self.endpoints.close()


class AckFailsOnce(RedisStreamSource):
    """A broker that takes the write but loses the first ack (a crash between the two)."""

    failed = False

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not self.failed:
            self.failed = True
            raise BrokerError("connection lost before XACK")
        await super().ack(deliveries)


async def rig(
    address: str,
    *,
    source_cls: type[RedisStreamSource] = RedisStreamSource,
    idle_ms: int = 60_000,
    tag: str = "",
    call_timeout_s: float = 5,
    **config: Any,
) -> Rig:
    tag = tag or uuid.uuid4().hex[:8]
    source, sink, dlq = f"in-{tag}", f"out-{tag}", f"dlq-{tag}"
    endpoints = EndpointSet()
    await endpoints.update([address])
    pipeline = Pipeline(
        source=source_cls(parse(f"{REDIS}?stream={source}"), group="g", consumer="c1",
                          idle_ms=idle_ms),
        sink=RedisStreamSink(parse(f"{REDIS}?stream={sink}"), dedupe_ttl_s=60, maxlen=10_000),
        dead_letter=RedisStreamSink(parse(f"{REDIS}?stream={dlq}"), dedupe_ttl_s=60, maxlen=100),
        scorer=GatewayScorer(gateways=endpoints, model=ModelRef("m"),
                             max_attempts=config.get("max_attempts", 3),
                             call_timeout_s=call_timeout_s),
        config=PipelineConfig(
            group="g", consumer="c1", reclaim_every_s=0.05, lag_every_s=0.05, **config
        ),
    )  # fmt: skip
    task = asyncio.create_task(pipeline.run())
    await asyncio.wait_for(pipeline.ready.wait(), 10)
    lag = asyncio.create_task(pipeline.watch_lag())
    task.add_done_callback(lambda _: lag.cancel())
    return Rig(pipeline, task, source, sink, dlq, endpoints)


async def add(client: aioredis.Redis, stream: str, ids: Sequence[str]) -> None:
    for i, eid in enumerate(ids):
        body = {"id": eid, "key": f"k{i % 5}", "inputs": {"INPUT0": [[1.0, 2.0, 3.0, float(i)]]}}
        await client.xadd(stream, {"data": json.dumps(body)})


async def records(client: aioredis.Redis, stream: str) -> list[dict[str, Any]]:
    return [json.loads(f[b"data"]) for _, f in await client.xrange(stream)]


async def group(client: aioredis.Redis, stream: str) -> dict[str, Any]:
    return next(g for g in await client.xinfo_groups(stream) if g["name"] == b"g")


async def test_each_event_is_scored_with_its_key_and_acked_after_the_write(
    gateway: tuple[FakeGateway, str], client: aioredis.Redis
) -> None:
    fake, address = gateway
    r = await rig(address, max_batch=4)
    try:
        ids = [f"plain-{uuid.uuid4().hex[:6]}-{i}" for i in range(20)]
        await add(client, r.source, ids)

        async def done() -> list[dict[str, Any]]:
            out = await records(client, r.sink)
            assert len(out) == 20 and (await group(client, r.source))["pending"] == 0
            return out

        results = await eventually(done)
    finally:
        await r.stop()
    assert {x["id"] for x in results} == set(ids)
    for i, eid in enumerate(ids):
        assert fake.keys[eid] == f"k{i % 5}"  # the event key is the routing key
    by_id = {x["id"]: x for x in results}
    assert by_id[ids[3]]["outputs"] == {"OUTPUT0": [[9.0]]}
    assert by_id[ids[3]]["key"] == "k3" and by_id[ids[3]]["version"] == "1"


async def test_reading_stops_at_max_in_flight_batches_while_the_gateway_is_slow(
    gateway: tuple[FakeGateway, str], client: aioredis.Redis
) -> None:
    fake, address = gateway
    fake.gate.clear()
    fake.max_active = 0
    # No call may time out while the gateway stalls: a timed-out event is retried, then
    # dead-lettered and acked, and reading would (rightly) go on past the first 8.
    r = await rig(address, max_batch=4, max_in_flight=2, call_timeout_s=120)
    try:
        await add(client, r.source, [f"slow-{uuid.uuid4().hex[:6]}-{i}" for i in range(100)])

        async def stalled() -> None:
            g = await group(client, r.source)
            seen = (
                fake.active,  # 2 batches of 4
                g["pending"],
                g["lag"],  # nothing more was read
                # ... and the lag gauge says so: pending + not yet delivered.
                REGISTRY.get_sample_value("modelserve_stream_consumer_lag", LABELS),
                REGISTRY.get_sample_value("modelserve_stream_pending", LABELS),
            )
            assert seen == (8, 8, 92, 100, 8), (seen, g)

        await eventually(stalled)
        assert fake.max_active == 8
        fake.gate.set()

        async def drained() -> None:
            assert len(await records(client, r.sink)) == 100

        await eventually(drained)
        assert fake.max_active == 8
    finally:
        fake.gate.set()
        await r.stop()


async def test_transient_codes_are_retried_then_dead_lettered_permanent_ones_at_once(
    gateway: tuple[FakeGateway, str], client: aioredis.Redis
) -> None:
    fake, address = gateway
    tag = uuid.uuid4().hex[:6]
    ids = [f"unavailable-{tag}", f"flaky-{tag}", f"bad-{tag}", f"ok-{tag}"]
    r = await rig(address, max_attempts=3)
    try:
        await add(client, r.source, ids)

        async def settled() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            out, dead = await records(client, r.sink), await records(client, r.dlq)
            assert len(out) == 2 and len(dead) == 2
            assert (await group(client, r.source))["pending"] == 0  # the dead are acked too
            return out, dead

        results, dead = await eventually(settled)
    finally:
        await r.stop()
    assert {x["id"] for x in results} == {f"flaky-{tag}", f"ok-{tag}"}
    assert fake.calls[f"flaky-{tag}"] == 3
    by_id = {d["id"]: d for d in dead}
    assert by_id[f"unavailable-{tag}"]["code"] == "UNAVAILABLE"
    assert by_id[f"unavailable-{tag}"]["attempts"] == 3 == fake.calls[f"unavailable-{tag}"]
    assert by_id[f"bad-{tag}"]["code"] == "INVALID_ARGUMENT"
    assert by_id[f"bad-{tag}"]["attempts"] == 1 == fake.calls[f"bad-{tag}"]
    assert "INPUT0" in by_id[f"bad-{tag}"]["error"]
    assert json.loads(by_id[f"bad-{tag}"]["data"])["id"] == f"bad-{tag}"  # the event itself


async def test_an_event_delivered_too_often_is_dead_lettered_unscored(
    gateway: tuple[FakeGateway, str], client: aioredis.Redis
) -> None:
    fake, address = gateway
    tag = uuid.uuid4().hex[:8]
    source = f"in-{tag}"
    await client.xgroup_create(source, "g", id="0", mkstream=True)
    await add(client, source, [f"crasher-{tag}"])
    # Two consumers took it and died without an ack: delivered twice already.
    await client.xreadgroup("g", "ghost", {source: ">"})
    entry = (await client.xrange(source))[0][0]
    await client.xclaim(source, "g", "ghost2", 0, [entry])
    r = await rig(address, idle_ms=1, max_attempts=2, tag=tag)
    try:

        async def dead() -> dict[str, Any]:
            found = await records(client, r.dlq)
            assert len(found) == 1
            return found[0]

        letter = await eventually(dead)
    finally:
        await r.stop()
    assert letter["code"] == "REDELIVERED" and letter["deliveries"] == 3, letter
    assert fake.calls[f"crasher-{tag}"] == 0


async def test_an_ack_lost_after_the_write_never_yields_a_second_result(
    gateway: tuple[FakeGateway, str], client: aioredis.Redis
) -> None:
    _, address = gateway
    r = await rig(address, source_cls=AckFailsOnce, idle_ms=200, max_batch=50)
    try:
        ids = [f"once-{uuid.uuid4().hex[:6]}-{i}" for i in range(10)]
        await add(client, r.source, ids)

        async def done() -> list[dict[str, Any]]:
            # The first batch's ack was lost; XAUTOCLAIM hands it back, the sink drops the
            # rewrites, and the second ack goes through.
            assert (await group(client, r.source))["pending"] == 0
            assert (await group(client, r.source))["entries-read"] == 10
            return await records(client, r.sink)

        results = await eventually(done)
    finally:
        await r.stop()
    assert sorted(x["id"] for x in results) == sorted(ids)


async def test_drain_finishes_the_batches_in_flight_and_leaves_the_group(
    gateway: tuple[FakeGateway, str], client: aioredis.Redis
) -> None:
    fake, address = gateway
    fake.gate.clear()
    r = await rig(address, max_batch=4, max_in_flight=2)
    try:
        await add(client, r.source, [f"drain-{uuid.uuid4().hex[:6]}-{i}" for i in range(12)])

        async def busy() -> None:
            assert fake.active == 8

        await eventually(busy)
        drain = asyncio.create_task(r.pipeline.drain())
        await asyncio.sleep(0)
        assert not drain.done()
        fake.gate.set()
        await asyncio.wait_for(drain, 10)
        assert len(await records(client, r.sink)) == 8  # in flight: finished and acked
        g = await group(client, r.source)
        assert g["pending"] == 0 and g["lag"] == 4 and g["consumers"] == 0, g
    finally:
        fake.gate.set()
        await r.pipeline.close()
        await r.task
        await r.endpoints.close()
