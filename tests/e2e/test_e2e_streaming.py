"""Streaming inference through the running suite, on real brokers: events in a Redis stream
or a JetStream stream come out as exactly one result each, equal to the online answer;
poison events land in the dead-letter stream and the rest flow on."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis
from streamsupport import (
    SHARED_NATS,
    SHARED_REDIS,
    Streamer,
    event,
    metric,
    nats_publish,
    nats_records,
    nats_url,
    redis_records,
    redis_url,
    start_streamer,
    unique,
    xadd_events,
)
from testsupport import eventually

from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import decode_outputs, encode_inputs

N = 240


def tabular_events(n: int, prefix: str, seed: int = 0) -> tuple[list[bytes], dict[str, Any]]:
    """n events for `tabular` (INPUT0 FP32 [-1, 32]), one or two rows each, keyed by user."""
    rng = np.random.default_rng(seed)
    payloads, inputs = [], {}
    for i in range(n):
        rows = rng.standard_normal((1 + i % 2, 32)).astype(np.float32)
        eid = f"{prefix}-{i}"
        inputs[eid] = (f"user-{i % 17}", rows)
        payloads.append(event(eid, f"user-{i % 17}", {"INPUT0": rows.tolist()}))
    return payloads, inputs


async def online_answers(
    gateway: str, model: str, inputs: dict[str, Any]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """The gateway's answer to each event's inputs, asked online with the same routing key."""
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def one(eid: str, key: str, rows: np.ndarray) -> tuple[str, tuple[str, Any]]:
            request = pb.ModelInferRequest(model_name=model)
            request.parameters["routing_key"].string_param = key
            encode_inputs(request, {"INPUT0": rows})
            reply = await stub.ModelInfer(request, timeout=10)
            outs = {k: v.tolist() for k, v in decode_outputs(reply).items()}
            return eid, (reply.model_version, outs)

        pairs = await asyncio.gather(*(one(e, k, r) for e, (k, r) in inputs.items()))
    return dict(pairs)


def assert_one_result_each(results: list[dict[str, Any]], ids: set[str]) -> None:
    counts = Counter(r["id"] for r in results)
    assert set(counts) == ids, (
        f"missing {sorted(ids - set(counts))[:5]}, extra {sorted(set(counts) - ids)[:5]}"
    )
    twice = {i: c for i, c in counts.items() if c > 1}
    assert not twice, f"events with more than one result: {list(twice.items())[:5]}"


def assert_equal_to_online(
    results: list[dict[str, Any]], online: dict[str, tuple[str, dict[str, Any]]]
) -> None:
    for r in results:
        version, outputs = online[r["id"]]
        assert r["model"] == "tabular" and r["version"] == version, r
        assert r["outputs"] == outputs, f"{r['id']}: streamed {r['outputs']} != online {outputs}"
        assert r["scored_at"] >= r["event_time"] and r["latency_ms"] >= 0


async def replayed(streamer: Streamer, n: int) -> None:
    """Every event was delivered twice and nothing is in flight."""
    assert metric(streamer, "modelserve_stream_events_in_total") >= 2 * n
    assert metric(streamer, "modelserve_stream_batches_in_flight") == 0


async def test_redis_n_events_in_n_results_out_equal_to_online(
    suite: Suite, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(SHARED_REDIS)
    source, sink = unique("events"), unique("results")
    payloads, inputs = tabular_events(N, source)
    xadd_events(client, source, payloads[: N // 2])  # some before the consumer exists
    streamer = await start_streamer(
        suite.address("gateway"), "tabular",
        source=redis_url(SHARED_REDIS, source), sink=redis_url(SHARED_REDIS, sink),
        group="scorers", workdir=tmp_path, args=["--max-batch", "16"],
    )  # fmt: skip
    try:
        xadd_events(client, source, payloads[N // 2 :])  # and some while it runs

        async def all_scored() -> list[dict[str, Any]]:
            results = redis_records(client, sink)
            assert len(results) >= N, f"{len(results)} of {N} results"
            return results

        results = await eventually(all_scored, timeout=60)
        # Replay: the group is moved back to the stream's start, so every event is delivered
        # again. The sink remembers each event id: no second result is written.
        client.xgroup_setid(source, "scorers", "0")
        await eventually(lambda: replayed(streamer, N), timeout=60)
        results = redis_records(client, sink)
        assert metric(streamer, "modelserve_stream_duplicates_total") == N
        assert streamer.terminate() == 0, streamer.log()
    finally:
        streamer.kill()
    assert_one_result_each(results, set(inputs))
    assert len(results) == N
    assert_equal_to_online(
        results, await online_answers(suite.address("gateway"), "tabular", inputs)
    )
    # Every event acked, and the consumer left its group on SIGTERM (nothing was pending).
    group = next(g for g in client.xinfo_groups(source) if g["name"] == b"scorers")
    assert group["pending"] == 0 and group["consumers"] == 0, group


async def test_nats_n_events_in_n_results_out_equal_to_online(suite: Suite, tmp_path: Path) -> None:
    source, sink = unique("events"), unique("results")
    payloads, inputs = tabular_events(N, source, seed=1)
    await nats_publish(SHARED_NATS, source, payloads)
    streamer = await start_streamer(
        suite.address("gateway"), "tabular",
        source=nats_url(SHARED_NATS, source), sink=nats_url(SHARED_NATS, sink),
        group="scorers", workdir=tmp_path, args=["--max-batch", "32"],
    )  # fmt: skip
    try:

        async def all_scored() -> list[dict[str, Any]]:
            results = await nats_records(SHARED_NATS, sink)
            assert len(results) >= N, f"{len(results)} of {N} results"
            return results

        results = await eventually(all_scored, timeout=60)
        # The producer sends every event again (a retry after a lost publish ack): the
        # sink's duplicate window drops the second result of each event id.
        await nats_publish(SHARED_NATS, source, payloads)
        await eventually(lambda: replayed(streamer, N), timeout=60)
        results = await nats_records(SHARED_NATS, sink)
        assert metric(streamer, "modelserve_stream_duplicates_total") == N
        assert streamer.terminate() == 0, streamer.log()
    finally:
        streamer.kill()
    assert_one_result_each(results, set(inputs))
    assert len(results) == N
    assert_equal_to_online(
        results, await online_answers(suite.address("gateway"), "tabular", inputs)
    )


@pytest.mark.parametrize("broker", ["redis", "nats"])
async def test_poison_events_are_dead_lettered_and_the_rest_flow_on(
    suite: Suite, tmp_path: Path, broker: str
) -> None:
    source, sink = unique("events"), unique("results")
    good, inputs = tabular_events(40, source, seed=2)
    poison = {
        "not-json": b"{this is not json",
        "not-proto": b"\xff\xfe garbage that is no protobuf",
        "no-inputs": json.dumps({"id": "no-inputs", "key": "k"}).encode(),
        "unknown-input": event("unknown-input", "k", {"NOPE": [[1.0]]}),
        "wrong-width": event("wrong-width", "k", {"INPUT0": [[1.0, 2.0, 3.0]]}),
        "not-numbers": event("not-numbers", "k", {"INPUT0": [["a"] * 32]}),
    }
    mixed = []
    for i, payload in enumerate(good):
        mixed.append(payload)
        if i % 7 == 3 and poison:
            mixed.append(poison.pop(next(iter(poison))))
    mixed += list(poison.values())
    if broker == "redis":
        client = redis.Redis.from_url(SHARED_REDIS)
        xadd_events(client, source, mixed)
        client.xadd(source, {"other": b"an entry without a data field"})
        urls = redis_url(SHARED_REDIS, source), redis_url(SHARED_REDIS, sink)
        dlq = redis_url(SHARED_REDIS, sink + ".dlq")
    else:
        await nats_publish(SHARED_NATS, source, mixed)
        urls = nats_url(SHARED_NATS, source), nats_url(SHARED_NATS, sink)
        dlq = nats_url(SHARED_NATS, sink + "-dlq")
    streamer = await start_streamer(
        suite.address("gateway"), "tabular", source=urls[0], sink=urls[1], group="g",
        workdir=tmp_path, dead_letter=dlq, args=["--max-batch", "8"],
    )  # fmt: skip

    async def read(stream: str) -> list[dict[str, Any]]:
        if broker == "redis":
            return redis_records(client, stream)
        return await nats_records(SHARED_NATS, stream)

    expected_dead = 7 if broker == "redis" else 6
    try:

        async def settled() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            results, dead = (
                await read(sink),
                await read(sink + (".dlq" if broker == "redis" else "-dlq")),
            )
            assert len(results) >= 40 and len(dead) >= expected_dead, (len(results), len(dead))
            return results, dead

        results, dead = await eventually(settled, timeout=60)
        assert streamer.terminate() == 0, streamer.log()
    finally:
        streamer.kill()
    assert_one_result_each(results, set(inputs))
    assert len(dead) == expected_dead, dead
    by_id = {d["id"]: d for d in dead if d["id"]}
    for eid in ("no-inputs", "unknown-input", "wrong-width", "not-numbers"):
        assert by_id[eid]["code"] == "INVALID_ARGUMENT", by_id[eid]
        assert by_id[eid]["error"], by_id[eid]
    assert "32" in by_id["wrong-width"]["error"], by_id["wrong-width"]  # the gateway's reason
    assert by_id["wrong-width"]["attempts"] == 1
    anonymous = [d for d in dead if not d["id"]]
    assert {d["code"] for d in anonymous} == {"INVALID_ARGUMENT"}
    assert any("JSON" in d["error"] for d in anonymous), anonymous
    if broker == "redis":
        assert any("no 'data' field" in d["error"] for d in anonymous), anonymous
        group = next(g for g in client.xinfo_groups(source) if g["name"] == b"g")
        assert group["pending"] == 0 and group["lag"] == 0, group  # poison acked too
