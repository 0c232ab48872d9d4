"""ArtifactCache against a fake registry on a real gRPC server: verify, reuse, refuse."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from grpc import aio
from worker_testkit import RegistryServer

from modelserve.cli import demo_models
from modelserve.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from modelserve.proto.modelserve.v1 import registry_pb2_grpc
from worker.artifacts import ArtifactCache

FRAUD_V2 = demo_models.fraud(2).SerializeToString()
FRAUD_V2_SHA = hashlib.sha256(FRAUD_V2).hexdigest()


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_fetch_writes_the_verified_file_named_by_its_sha(
    registry: RegistryServer, tmp_path: Path
) -> None:
    sha = registry.fake.add("fraud", 2, FRAUD_V2)
    cache = ArtifactCache(tmp_path)

    path = await cache.fetch(registry.stub, "fraud", 2, sha)

    assert path == tmp_path / f"{sha}.onnx"
    assert path.read_bytes() == FRAUD_V2
    assert files(tmp_path) == [f"{sha}.onnx"]  # no temp file left behind
    assert registry.fake.calls == [("fraud", 2)]


async def test_a_cached_file_is_reused_without_asking_the_registry(
    registry: RegistryServer, tmp_path: Path
) -> None:
    sha = registry.fake.add("fraud", 2, FRAUD_V2)
    await ArtifactCache(tmp_path).fetch(registry.stub, "fraud", 2, sha)

    # A fresh cache object (a restarted worker) on the same directory.
    path = await ArtifactCache(tmp_path).fetch(registry.stub, "fraud", 2, sha)

    assert path.read_bytes() == FRAUD_V2
    assert registry.fake.calls == [("fraud", 2)]


async def test_a_tampered_cached_file_is_fetched_again(
    registry: RegistryServer, tmp_path: Path
) -> None:
    sha = registry.fake.add("fraud", 2, FRAUD_V2)
    cache = ArtifactCache(tmp_path)
    path = await cache.fetch(registry.stub, "fraud", 2, sha)
    path.write_bytes(b"not the model")

    again = await cache.fetch(registry.stub, "fraud", 2, sha)

    assert again.read_bytes() == FRAUD_V2
    assert len(registry.fake.calls) == 2


async def test_concurrent_fetches_of_one_artifact_download_it_once(
    registry: RegistryServer, tmp_path: Path
) -> None:
    sha = registry.fake.add("fraud", 2, FRAUD_V2)
    cache = ArtifactCache(tmp_path)

    paths = await asyncio.gather(*(cache.fetch(registry.stub, "fraud", 2, sha) for _ in range(4)))

    assert set(paths) == {tmp_path / f"{sha}.onnx"}
    assert registry.fake.calls == [("fraud", 2)]


async def test_corrupted_bytes_fail_verification_and_leave_nothing(
    registry: RegistryServer, tmp_path: Path
) -> None:
    sha = registry.fake.add("fraud", 2, FRAUD_V2)
    registry.fake.corrupt = True

    with pytest.raises(FailedPreconditionError) as raised:
        await ArtifactCache(tmp_path).fetch(registry.stub, "fraud", 2, sha)

    message = raised.value.message
    assert message.startswith(f"artifact for fraud v2 failed verification: expected sha256 {sha}")
    assert "got " in message and str(tmp_path) not in message
    assert files(tmp_path) == []


async def test_a_wrong_expected_sha_fails_verification_and_leaves_nothing(
    registry: RegistryServer, tmp_path: Path
) -> None:
    registry.fake.add("fraud", 2, FRAUD_V2)
    wrong = hashlib.sha256(b"another model").hexdigest()

    with pytest.raises(FailedPreconditionError) as raised:
        await ArtifactCache(tmp_path).fetch(registry.stub, "fraud", 2, wrong)

    assert f"expected sha256 {wrong}" in raised.value.message
    assert FRAUD_V2_SHA in raised.value.message  # what the registry announced instead
    assert files(tmp_path) == []


async def test_an_unknown_model_stays_not_found(registry: RegistryServer, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as raised:
        await ArtifactCache(tmp_path).fetch(registry.stub, "nope", 1, FRAUD_V2_SHA)

    assert "nope v1" in raised.value.message
    assert files(tmp_path) == []


async def test_an_unreachable_registry_is_unavailable(
    registry: RegistryServer, tmp_path: Path
) -> None:
    # A port that was just free: bind a server, learn its port, stop it.
    server = aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await server.stop(None)
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        with pytest.raises(UnavailableError):
            await ArtifactCache(tmp_path).fetch(stub, "fraud", 2, FRAUD_V2_SHA, timeout=5)
    assert files(tmp_path) == []


@pytest.mark.parametrize("bad", ["", "abc", FRAUD_V2_SHA.upper(), "../" + FRAUD_V2_SHA[3:]])
async def test_a_malformed_sha_is_an_invalid_argument(
    registry: RegistryServer, tmp_path: Path, bad: str
) -> None:
    with pytest.raises(InvalidArgumentError):
        await ArtifactCache(tmp_path).fetch(registry.stub, "fraud", 2, bad)
    assert registry.fake.calls == []


async def test_evict_keeps_only_the_listed_artifacts(
    registry: RegistryServer, tmp_path: Path
) -> None:
    cache = ArtifactCache(tmp_path)
    v1 = registry.fake.add("fraud", 1, demo_models.fraud(1).SerializeToString())
    v2 = registry.fake.add("fraud", 2, FRAUD_V2)
    await cache.fetch(registry.stub, "fraud", 1, v1)
    await cache.fetch(registry.stub, "fraud", 2, v2)
    (tmp_path / f".{v1}.dead.partial").write_bytes(b"left by a crash")
    (tmp_path / "notes.txt").write_text("not the cache's")

    removed = cache.evict({v2})

    assert removed == [v1]
    assert files(tmp_path) == sorted([f"{v2}.onnx", "notes.txt"])
