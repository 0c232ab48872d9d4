"""Routing policies through the running suite: a 50/50 split set with the CLI sends each of
200 routing keys to one version every time (through the gateway and the router alike), and
blue-green switch and rollback move the answering version with no restart."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from testsupport import eventually

from modelserve.catalog.routing import Share, bucket_of, pick
from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2_grpc
from modelserve.tensors import encode_inputs

CLI = Path(sys.executable).parent / "modelserve"
MODEL = "split_demo"  # only this file uses it: the demo models stay as other tests expect
KEYS = [f"customer-{i}" for i in range(200)]
ROWS = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)
Infer = Callable[[pb.ModelInferRequest], Awaitable[pb.ModelInferResponse]]


async def modelserve(*args: str) -> str:
    result = await asyncio.to_thread(
        subprocess.run, [str(CLI), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


async def policy(suite: Suite, *args: str) -> str:
    return await modelserve("policy", "--registry", suite.address("registry"), *args)


@pytest.fixture(scope="module")
async def pushed(suite: Suite, demo_dir: Path) -> str:
    """split_demo v1 (label blue) and v2 (label green), from the demo fraud models."""
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        await push_version(stub, MODEL, demo_dir / "fraud_v1.onnx", labels=["blue"])
        await push_version(stub, MODEL, demo_dir / "fraud_v2.onnx", labels=["green"])
    return MODEL


def keyed(key: str = "", *, via_metadata: bool = False, version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL, model_version=version)
    if key and not via_metadata:
        request.parameters["routing_key"].string_param = key
    encode_inputs(request, {"transaction": ROWS})
    return request


async def answering_versions(address: str, keys: list[str], via_metadata: bool) -> list[str]:
    """The version that answered each key, 20 requests in flight at a time."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def one(key: str) -> str:
            metadata = (("x-routing-key", key),) if via_metadata else None
            reply = await stub.ModelInfer(
                keyed(key, via_metadata=via_metadata), timeout=10, metadata=metadata
            )
            return reply.model_version

        out: list[str] = []
        for start in range(0, len(keys), 20):
            out += await asyncio.gather(*(one(k) for k in keys[start : start + 20]))
        return out


async def wait_version_ready(suite: Suite, version: str) -> None:
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def ready() -> None:
            reply = await stub.ModelReady(
                pb.ModelReadyRequest(name=MODEL, version=version), timeout=5
            )
            assert reply.ready

        await eventually(ready, timeout=60)


def expected(key: str) -> str:
    """What the split decides for ``key``, computed here with the same rules."""
    return str(pick([Share(1, "", 5000), Share(2, "", 5000)], bucket_of(MODEL, key)).version)


async def test_a_50_50_split_keeps_every_key_on_one_version(suite: Suite, pushed: str) -> None:
    out = await policy(suite, "split", MODEL, "1=50", "2=50", "--note", "e2e split")
    assert f"{MODEL}: policy revision" in out and "split 1=50% 2=50%" in out
    await wait_version_ready(suite, "1")  # only the policy names v1: workers load it for it
    await wait_version_ready(suite, "2")
    want = [expected(k) for k in KEYS]
    assert set(want) == {"1", "2"}

    async def gateway_follows_the_split() -> None:
        assert await answering_versions(suite.address("gateway"), KEYS[:20], False) == want[:20]

    await eventually(gateway_follows_the_split)
    for via_metadata in (False, True, False):
        assert await answering_versions(suite.address("gateway"), KEYS, via_metadata) == want
    # The router called directly decides the same, with the same code.
    assert await answering_versions(suite.address("router"), KEYS, True) == want


async def test_switch_and_rollback_move_all_traffic_without_a_restart(
    suite: Suite, pushed: str
) -> None:
    gateway = suite.address("gateway")
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def all_answered_by(version: str) -> None:
            keyed_answers = await answering_versions(gateway, KEYS[:40], False)
            unkeyed = [await stub.ModelInfer(keyed(), timeout=10) for _ in range(10)]
            assert set(keyed_answers) | {r.model_version for r in unkeyed} == {version}

        assert "all -> label green" in await policy(suite, "switch", MODEL, "green")
        await eventually(lambda: all_answered_by("2"))
        # An explicit version still wins over the policy.
        explicit = await stub.ModelInfer(keyed("customer-1", version="1"), timeout=10)
        assert explicit.model_version == "1"

        assert "all -> label blue" in await policy(suite, "switch", MODEL, "blue")
        await eventually(lambda: all_answered_by("1"))

        assert "all -> label green" in await policy(suite, "rollback", MODEL)
        await eventually(lambda: all_answered_by("2"))

    history = (await policy(suite, "history", MODEL)).splitlines()
    assert "all -> label green" in history[-1] and "(rollback to revision" in history[-1]
    assert "all -> label blue" in history[-2]
    assert "all -> label green" in (await policy(suite, "show", MODEL))


async def test_a_bad_split_is_refused_by_name_and_the_policy_in_force_stays(
    suite: Suite, pushed: str
) -> None:
    before = await policy(suite, "show", MODEL)
    registry = suite.address("registry")
    for args, fragment in (
        (("1=60", "2=30"), "INVALID_ARGUMENT: split weights sum to 90%"),
        (("1=50", "7=50"), "FAILED_PRECONDITION: the policy routes to version 7"),
    ):
        result = await asyncio.to_thread(
            subprocess.run,
            [str(CLI), "policy", "--registry", registry, "split", MODEL, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1 and fragment in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert await policy(suite, "show", MODEL) == before
