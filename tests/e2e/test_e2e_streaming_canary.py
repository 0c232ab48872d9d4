"""A canary started while events stream moves streaming traffic by key exactly as it moves
online traffic: after the canary takes its first step, each event's result comes from the
version an online call with the same routing key gets."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import redis
from streamsupport import (
    SHARED_REDIS,
    event,
    redis_records,
    redis_url,
    start_streamer,
    unique,
    xadd_events,
)
from testsupport import eventually

from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2_grpc
from modelserve.tensors import encode_inputs

CLI = Path(sys.executable).parent / "modelserve"
MODEL = "stream_canary"
KEYS = [f"customer-{i}" for i in range(120)]
ROW = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)


async def modelserve(*args: str) -> str:
    result = await asyncio.to_thread(
        subprocess.run, [str(CLI), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


async def online_versions(gateway: str) -> dict[str, str]:
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def one(key: str) -> tuple[str, str]:
            request = pb.ModelInferRequest(model_name=MODEL)
            request.parameters["routing_key"].string_param = key
            encode_inputs(request, {"transaction": ROW})
            return key, (await stub.ModelInfer(request, timeout=10)).model_version

        return dict(await asyncio.gather(*(one(k) for k in KEYS)))


def wave(name: str) -> list[bytes]:
    return [event(f"{name}-{k}", k, {"transaction": ROW.tolist()}) for k in KEYS]


async def test_a_canary_moves_streaming_traffic_by_key_like_online(
    suite: Suite, demo_dir: Path, tmp_path: Path
) -> None:
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        await push_version(stub, MODEL, demo_dir / "fraud_v1.onnx", labels=["production"])
        await push_version(stub, MODEL, demo_dir / "fraud_v2.onnx")
    gateway = suite.address("gateway")

    async def v1_serves() -> None:
        assert set((await online_versions(gateway)).values()) == {"1"}

    await eventually(v1_serves, timeout=60)
    client = redis.Redis.from_url(SHARED_REDIS)
    source, sink = unique("events"), unique("results")
    streamer = await start_streamer(
        gateway, MODEL, source=redis_url(SHARED_REDIS, source),
        sink=redis_url(SHARED_REDIS, sink), group="g", workdir=tmp_path,
    )  # fmt: skip
    registry = ["canary", "--registry", suite.address("registry")]
    try:

        async def results(prefix: str) -> dict[str, dict[str, Any]]:
            found = {r["key"]: r for r in redis_records(client, sink) if r["id"].startswith(prefix)}
            assert len(found) == len(KEYS), f"{len(found)} of {len(KEYS)} {prefix} results"
            return found

        xadd_events(client, source, wave("before"))
        before = await eventually(lambda: results("before-"), timeout=60)
        assert {r["version"] for r in before.values()} == {"1"}

        # Gates that cannot pass during the test: the canary holds its first step (50 %).
        await modelserve(
            *registry, "start", MODEL, "--baseline", "1", "--candidate", "2",
            "--steps", "50,100", "--min-requests", "1000000", "--min-seconds", "3600",
            "--router", suite.address("router"),
        )  # fmt: skip

        async def split_online() -> dict[str, str]:
            versions = await online_versions(gateway)
            assert set(versions.values()) == {"1", "2"}, versions
            return versions

        online = await eventually(split_online, timeout=60)
        xadd_events(client, source, wave("during"))
        during = await eventually(lambda: results("during-"), timeout=60)
        streamed = {k: r["version"] for k, r in during.items()}
        assert streamed == online, {
            k: (streamed[k], online[k]) for k in KEYS if streamed[k] != online[k]
        }
        assert streamed == await online_versions(gateway)  # still the same step
        assert streamer.terminate() == 0, streamer.log()
    finally:
        streamer.kill()
        await asyncio.to_thread(
            subprocess.run, [str(CLI), *registry, "abort", MODEL], capture_output=True, timeout=60
        )
