"""Pushes by reference on a real registry (SQLite and PostgreSQL): the artifact is read from
a real file, HTTP server or S3 endpoint, verified and inspected like an upload, and not
kept; FetchArtifact relays it from the URI; every refusal stores nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import onnx
import pytest
from artifactsupport import HttpStore, http_store, s3_store, sha256_of
from registry_testkit import FRAUD_V1, FRAUD_V2, Registry, expect_status

from modelserve.artifact_uris import FetchOptions
from modelserve.cli import demo_models
from modelserve.proto.modelserve.v1 import registry_pb2

pytestmark = pytest.mark.usefixtures("database_url")

StartRegistry = Callable[..., Awaitable[Registry]]
INVALID = grpc.StatusCode.INVALID_ARGUMENT
FAILED = grpc.StatusCode.FAILED_PRECONDITION
FRAUD_V1_SHA = sha256_of(FRAUD_V1)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    directory.mkdir()
    return directory


@pytest.fixture
def www(tmp_path: Path) -> Iterator[HttpStore]:
    with http_store(tmp_path / "www") as store:
        yield store


@pytest.fixture
async def registry(start_registry: StartRegistry, models_dir: Path, www: HttpStore) -> Registry:
    """A registry accepting file:// under ``models_dir`` and http:// under ``www``."""
    return await start_registry(
        artifact_uri_prefixes=[f"file://{models_dir}/", f"{www.url}/"],
        artifact_fetch=FetchOptions(timeout_s=5.0),
    )


async def assert_nothing_stored(registry: Registry) -> None:
    listed = await registry.stub.ListModels(registry_pb2.ListModelsRequest())
    assert list(listed.models) == []
    assert registry.artifact_files() == []
    assert registry.temp_entries() == []


async def fetched(registry: Registry, model: str, version: int = 0) -> bytes:
    chunks = await registry.fetch(model, version)
    assert chunks[0].sha256 and chunks[0].size_bytes == sum(len(c.data) for c in chunks)
    return b"".join(c.data for c in chunks)


async def test_a_file_uri_is_verified_inspected_and_not_copied(
    registry: Registry, models_dir: Path
) -> None:
    (models_dir / "fraud-v1.onnx").write_bytes(FRAUD_V1)
    uri = f"file://{models_dir}/fraud-v1.onnx"

    v = await registry.push_by_reference("fraud", uri, FRAUD_V1_SHA, labels=["production"])
    assert registry.artifact_files() == [] and registry.temp_entries() == []
    uploaded = await registry.push("fraud", FRAUD_V2)  # same signature, uploaded, to compare

    assert (v.version, v.sha256, v.size_bytes, v.artifact_uri) == (
        1, FRAUD_V1_SHA, len(FRAUD_V1), uri,
    )  # fmt: skip
    assert list(v.inputs) == list(uploaded.inputs) and list(v.outputs) == list(uploaded.outputs)
    assert uploaded.artifact_uri == ""
    # Only the upload's file is in the registry's storage; nothing is left in tmp.
    assert [p.stem for p in registry.artifact_files()] == [uploaded.sha256]
    assert registry.temp_entries() == []
    model = await registry.stub.GetModel(registry_pb2.GetModelRequest(name="fraud"))
    assert [x.artifact_uri for x in model.versions] == [uri, ""]
    assert await fetched(registry, "fraud", 1) == FRAUD_V1  # relayed from the URI


async def test_an_http_uri_is_read_at_push_and_again_for_each_fetch(
    registry: Registry, www: HttpStore
) -> None:
    uri = www.put("fraud-v2.onnx", FRAUD_V2)

    v = await registry.push_by_reference("fraud", uri, sha256_of(FRAUD_V2))

    assert v.artifact_uri == uri and registry.artifact_files() == []
    assert await fetched(registry, "fraud") == FRAUD_V2
    assert www.requests == ["/fraud-v2.onnx", "/fraud-v2.onnx"]  # push, then the fetch


async def test_an_s3_uri_is_read_from_the_configured_endpoint(
    start_registry: StartRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    with s3_store(monkeypatch) as s3:
        registry = await start_registry(
            artifact_uri_prefixes=["s3://models/"],
            artifact_fetch=FetchOptions(timeout_s=5.0, s3_endpoint_url=s3.endpoint_url),
        )
        uri = s3.put("models", "fraud/v1.onnx", FRAUD_V1)

        v = await registry.push_by_reference("fraud", uri, FRAUD_V1_SHA)

        assert v.artifact_uri == uri and registry.artifact_files() == []
        assert await fetched(registry, "fraud") == FRAUD_V1
        await expect_status(
            registry.push_by_reference("fraud", "s3://models/fraud/v9.onnx", FRAUD_V1_SHA),
            FAILED,
            "NoSuchKey",
        )


async def test_the_uri_is_kept_across_a_restart(
    start_registry: StartRegistry, models_dir: Path, tmp_path: Path
) -> None:
    (models_dir / "m.onnx").write_bytes(FRAUD_V1)
    uri = f"file://{models_dir}/m.onnx"
    prefixes = [f"file://{models_dir}/"]
    first = await start_registry(artifact_uri_prefixes=prefixes)
    await first.push_by_reference("fraud", uri, FRAUD_V1_SHA)
    await first.stop()

    again = await start_registry(tmp_path / "data", artifact_uri_prefixes=prefixes)

    got = await again.stub.GetVersion(registry_pb2.GetVersionRequest(model="fraud", version=1))
    assert got.artifact_uri == uri
    assert await fetched(again, "fraud") == FRAUD_V1


async def test_without_allowed_prefixes_pushes_by_reference_are_refused(
    start_registry: StartRegistry, models_dir: Path
) -> None:
    registry = await start_registry()
    (models_dir / "m.onnx").write_bytes(FRAUD_V1)
    await expect_status(
        registry.push_by_reference("fraud", f"file://{models_dir}/m.onnx", FRAUD_V1_SHA),
        FAILED,
        "accepts no artifact URIs",
    )
    await assert_nothing_stored(registry)


@pytest.mark.parametrize(
    ("uri", "sha", "fragment"),
    [
        ("ftp://host/m.onnx", FRAUD_V1_SHA, "scheme must be one of"),
        ("file:///etc/passwd", FRAUD_V1_SHA, "not under any prefix"),
        ("{models}/../m.onnx", FRAUD_V1_SHA, "'..'"),
        ("{models}/m.onnx", "", "must give the artifact's sha256"),
        ("{models}/m.onnx", "ABC", "64 lowercase hex"),
    ],
)
async def test_bad_uris_and_missing_sha256_are_invalid_argument(
    registry: Registry, models_dir: Path, uri: str, sha: str, fragment: str
) -> None:
    (models_dir / "m.onnx").write_bytes(FRAUD_V1)
    uri = uri.replace("{models}", f"file://{models_dir}")
    await expect_status(registry.push_by_reference("fraud", uri, sha), INVALID, fragment)
    await assert_nothing_stored(registry)


async def test_chunks_after_a_by_reference_header_are_refused(
    registry: Registry, models_dir: Path
) -> None:
    (models_dir / "m.onnx").write_bytes(FRAUD_V1)
    uri = f"file://{models_dir}/m.onnx"
    await expect_status(
        registry.push_by_reference("fraud", uri, FRAUD_V1_SHA, chunks=[FRAUD_V1]),
        INVALID,
        "the push is the header alone",
    )
    await assert_nothing_stored(registry)


async def test_unreadable_artifacts_fail_the_push_and_store_nothing(
    registry: Registry, models_dir: Path, www: HttpStore
) -> None:
    await expect_status(
        registry.push_by_reference("fraud", f"{www.url}/missing.onnx", FRAUD_V1_SHA),
        FAILED,
        "HTTP 404",
    )
    await expect_status(
        registry.push_by_reference("fraud", f"file://{models_dir}/missing.onnx", FRAUD_V1_SHA),
        FAILED,
        "No such file",
    )
    await assert_nothing_stored(registry)


async def test_an_unreachable_host_fails_the_push(
    start_registry: StartRegistry, tmp_path: Path
) -> None:
    with http_store(tmp_path / "gone") as gone:  # stopped: its port now refuses
        url = gone.url
    registry = await start_registry(
        artifact_uri_prefixes=[url], artifact_fetch=FetchOptions(timeout_s=2.0)
    )
    await expect_status(
        registry.push_by_reference("fraud", f"{url}/m.onnx", FRAUD_V1_SHA),
        FAILED,
        "connection failed",
    )
    await assert_nothing_stored(registry)


async def test_a_sha256_mismatch_fails_the_push_and_stores_nothing(
    registry: Registry, www: HttpStore
) -> None:
    uri = www.put("m.onnx", FRAUD_V2)
    await expect_status(
        registry.push_by_reference("fraud", uri, FRAUD_V1_SHA), FAILED, "sha256 mismatch", uri
    )
    await assert_nothing_stored(registry)


async def test_the_artifact_is_inspected_like_an_upload(
    registry: Registry, models_dir: Path
) -> None:
    junk = b"not an onnx model" * 100
    (models_dir / "junk.onnx").write_bytes(junk)
    await expect_status(
        registry.push_by_reference("fraud", f"file://{models_dir}/junk.onnx", sha256_of(junk)),
        FAILED,
        "not an ONNX",
    )
    ext = models_dir / "ext.onnx"
    onnx.save_model(
        demo_models.fraud(1), ext, save_as_external_data=True, location="w.bin", size_threshold=0
    )
    await expect_status(
        registry.push_by_reference("fraud", f"file://{ext}", sha256_of(ext.read_bytes())),
        FAILED,
        "external data",
    )
    await assert_nothing_stored(registry)


async def test_the_size_limit_applies_to_artifacts_by_reference(
    start_registry: StartRegistry, models_dir: Path
) -> None:
    registry = await start_registry(
        max_artifact_bytes=512, artifact_uri_prefixes=[f"file://{models_dir}/"]
    )
    (models_dir / "big.onnx").write_bytes(FRAUD_V1)
    assert len(FRAUD_V1) > 512
    await expect_status(
        registry.push_by_reference("fraud", f"file://{models_dir}/big.onnx", FRAUD_V1_SHA),
        INVALID,
        "larger than this registry accepts",
    )
    await assert_nothing_stored(registry)


async def test_a_fetch_refuses_an_artifact_that_grew_at_its_uri(
    registry: Registry, models_dir: Path
) -> None:
    path = models_dir / "m.onnx"
    path.write_bytes(FRAUD_V1)
    await registry.push_by_reference("fraud", f"file://{path}", FRAUD_V1_SHA)
    path.write_bytes(FRAUD_V1 + b"\0" * (2 << 20))  # replaced there after the push

    request = registry_pb2.FetchArtifactRequest(model="fraud", version=1)
    await expect_status(
        _drain(registry.stub.FetchArtifact(request, timeout=10)), FAILED, "changed there"
    )
    assert hashlib.sha256(path.read_bytes()).hexdigest() != FRAUD_V1_SHA


async def _drain(call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
    async for _ in call:
        pass


async def test_a_lookup_model_takes_no_artifact_uri(registry: Registry, models_dir: Path) -> None:
    config = registry_pb2.ServingConfig()
    config.lookup.CopyFrom(
        registry_pb2.LookupConfig(
            view="preds",
            entity_input="user_id",
            outputs=[registry_pb2.LookupOutput(name="score", datatype="FP32", shape=[1])],
        )
    )
    header = registry_pb2.PushVersionRequest.Header(
        model="preds", config=config, sha256=FRAUD_V1_SHA, artifact_uri=f"file://{models_dir}/m"
    )
    await expect_status(
        registry.push_raw([registry_pb2.PushVersionRequest(header=header)]),
        INVALID,
        "no artifact_uri",
    )
    await assert_nothing_stored(registry)
