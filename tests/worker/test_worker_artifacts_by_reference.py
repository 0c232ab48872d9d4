"""ArtifactCache and versions pushed by reference: straight from a real HTTP server, a real
S3 endpoint or a file, verified; through the (fake, real gRPC) registry when the URI cannot
be read from here or direct fetch is off; refused when the bytes there do not verify."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from artifactsupport import HttpStore, http_store, s3_store
from worker_testkit import RegistryServer

from modelserve.artifact_uris import FetchOptions
from modelserve.cli import demo_models
from modelserve.errors import FailedPreconditionError
from worker.artifacts import ArtifactCache

FRAUD_V2 = demo_models.fraud(2).SerializeToString()
FRAUD_V2_SHA = hashlib.sha256(FRAUD_V2).hexdigest()
OPTIONS = FetchOptions(timeout_s=5.0, chunk_bytes=256)  # several chunks per demo model


@pytest.fixture
def www(tmp_path: Path) -> Iterator[HttpStore]:
    with http_store(tmp_path / "www") as store:
        yield store


def cache_at(directory: Path, **kwargs: object) -> ArtifactCache:
    return ArtifactCache(directory, fetch_options=OPTIONS, **kwargs)  # type: ignore[arg-type]


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_a_version_by_reference_is_fetched_straight_from_its_uri(
    registry: RegistryServer, www: HttpStore, tmp_path: Path
) -> None:
    uri = www.put("fraud.onnx", FRAUD_V2)
    registry.fake.add("fraud", 2, FRAUD_V2)
    cache = cache_at(tmp_path / "cache")

    path = await cache.fetch(registry.stub, "fraud", 2, FRAUD_V2_SHA, artifact_uri=uri)

    assert path.read_bytes() == FRAUD_V2
    assert files(tmp_path / "cache") == [f"{FRAUD_V2_SHA}.onnx"]  # no partial left
    assert www.requests == ["/fraud.onnx"] and registry.fake.calls == []


async def test_s3_and_file_uris_are_fetched_directly_too(
    registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with s3_store(monkeypatch) as s3:
        uri = s3.put("models", "fraud/v2.onnx", FRAUD_V2)
        options = FetchOptions(timeout_s=5.0, s3_endpoint_url=s3.endpoint_url)
        cache = ArtifactCache(tmp_path / "s3cache", fetch_options=options)
        path = await cache.fetch(registry.stub, "fraud", 2, FRAUD_V2_SHA, artifact_uri=uri)
        assert path.read_bytes() == FRAUD_V2
    (tmp_path / "m.onnx").write_bytes(FRAUD_V2)
    cache = cache_at(tmp_path / "filecache")
    uri = f"file://{tmp_path}/m.onnx"
    path = await cache.fetch(registry.stub, "fraud", 2, FRAUD_V2_SHA, artifact_uri=uri)
    assert path.read_bytes() == FRAUD_V2
    assert registry.fake.calls == []


@pytest.mark.parametrize("unreadable", ["http-404", "file-missing", "host-down", "s3-no-creds"])
async def test_a_uri_that_cannot_be_read_here_falls_back_to_the_registry(
    registry: RegistryServer,
    www: HttpStore,
    tmp_path: Path,
    unreadable: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.fake.add("fraud", 2, FRAUD_V2)
    options = OPTIONS
    if unreadable == "s3-no-creds":  # a store only the registry has credentials for
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with s3_store() as s3:
        options = FetchOptions(timeout_s=2.0, chunk_bytes=256, s3_endpoint_url=s3.endpoint_url)
        s3.put("models", "v2.onnx", FRAUD_V2)
        uri = {
            "http-404": f"{www.url}/not-there.onnx",
            "file-missing": f"file://{tmp_path}/not-mounted-here.onnx",
            "host-down": "http://127.0.0.1:1/fraud.onnx",
            "s3-no-creds": "s3://models/v2.onnx",
        }[unreadable]
        cache = ArtifactCache(tmp_path / "cache", fetch_options=options)

        path = await cache.fetch(registry.stub, "fraud", 2, FRAUD_V2_SHA, artifact_uri=uri)

    assert path.read_bytes() == FRAUD_V2
    assert registry.fake.calls == [("fraud", 2)]
    assert files(tmp_path / "cache") == [f"{FRAUD_V2_SHA}.onnx"]


async def test_with_direct_fetch_off_the_registry_serves_it(
    registry: RegistryServer, www: HttpStore, tmp_path: Path
) -> None:
    uri = www.put("fraud.onnx", FRAUD_V2)
    registry.fake.add("fraud", 2, FRAUD_V2)
    cache = cache_at(tmp_path / "cache", direct_fetch=False)

    path = await cache.fetch(registry.stub, "fraud", 2, FRAUD_V2_SHA, artifact_uri=uri)

    assert path.read_bytes() == FRAUD_V2
    assert www.requests == [] and registry.fake.calls == [("fraud", 2)]


async def test_bytes_at_the_uri_that_do_not_verify_are_refused_without_fallback(
    registry: RegistryServer, www: HttpStore, tmp_path: Path
) -> None:
    uri = www.put("fraud.onnx", FRAUD_V2[:-1] + bytes([FRAUD_V2[-1] ^ 0xFF]))  # changed there
    registry.fake.add("fraud", 2, FRAUD_V2)
    cache = cache_at(tmp_path / "cache")

    with pytest.raises(FailedPreconditionError, match="failed verification"):
        await cache.fetch(registry.stub, "fraud", 2, FRAUD_V2_SHA, artifact_uri=uri)

    assert files(tmp_path / "cache") == []  # nothing kept, not even the partial file
    assert registry.fake.calls == []  # the registry would relay the same wrong bytes


async def test_a_cached_artifact_is_reused_without_reading_the_uri(
    registry: RegistryServer, www: HttpStore, tmp_path: Path
) -> None:
    uri = www.put("fraud.onnx", FRAUD_V2)
    await cache_at(tmp_path / "cache").fetch(
        registry.stub, "fraud", 2, FRAUD_V2_SHA, artifact_uri=uri
    )
    await cache_at(tmp_path / "cache").fetch(
        registry.stub, "fraud", 2, FRAUD_V2_SHA, artifact_uri=uri
    )
    assert www.requests == ["/fraud.onnx"]
