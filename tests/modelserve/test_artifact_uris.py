"""modelserve.artifact_uris against real stores: local files, a real HTTP server, and a real
S3 endpoint on loopback (moto's server mode); the URI checks and the allowed prefixes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from artifactsupport import http_store, s3_store

from modelserve.artifact_uris import (
    ArtifactFetchError,
    ArtifactUri,
    FetchOptions,
    check_allowed,
    parse_artifact_uri,
    read_chunks,
)
from modelserve.errors import FailedPreconditionError, InvalidArgumentError

DATA = os.urandom(300_000)  # several chunks of CHUNK below
CHUNK = 64 * 1024


async def read_all(uri: str, **options: object) -> bytes:
    parsed = parse_artifact_uri(uri)
    opts = FetchOptions(chunk_bytes=CHUNK, **options)  # type: ignore[arg-type]
    parts = [chunk async for chunk in read_chunks(parsed, opts)]
    assert all(len(p) <= CHUNK for p in parts)
    return b"".join(parts)


@pytest.mark.parametrize(
    "uri",
    [
        "ftp://host/model.onnx",
        "model.onnx",
        "/abs/model.onnx",
        "file://host/model.onnx",
        "file:relative/model.onnx",
        "file:///srv/models/../etc/passwd",
        "file:///srv/models/%2e%2e/secret",
        "file:///srv/./model.onnx",
        "file:///srv//model.onnx",
        "file:////srv/model.onnx",
        "file:///srv/models/",
        "file:///srv/model.onnx?x=1",
        "http:///no-host.onnx",
        "https://host/a/../b.onnx",
        "s3://bucket",
        "s3://bucket/",
        "s3:///key.onnx",
        "s3://bucket/a/../b.onnx",
        "http://host/model one.onnx",
    ],
)
def test_malformed_uris_are_invalid_argument(uri: str) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_artifact_uri(uri)


def test_well_formed_uris_parse() -> None:
    assert parse_artifact_uri("file:///srv/m.onnx") == ArtifactUri(
        "file:///srv/m.onnx", "file", path="/srv/m.onnx"
    )
    assert parse_artifact_uri("file://localhost/srv/m.onnx").path == "/srv/m.onnx"
    s3 = parse_artifact_uri("s3://models/fraud/v1.onnx")
    assert (s3.bucket, s3.path) == ("models", "fraud/v1.onnx")
    assert parse_artifact_uri("https://example.com/m.onnx").scheme == "https"


def test_no_prefixes_means_push_by_reference_is_off() -> None:
    with pytest.raises(FailedPreconditionError, match="ARTIFACT_URI_PREFIXES"):
        check_allowed(parse_artifact_uri("s3://models/a.onnx"), [])


def test_prefixes_match_on_a_path_boundary() -> None:
    allowed = ["s3://models", "https://store.example/team/"]
    check_allowed(parse_artifact_uri("s3://models/a.onnx"), allowed)
    check_allowed(parse_artifact_uri("https://store.example/team/a.onnx"), allowed)
    for outside in ("s3://models-old/a.onnx", "https://store.example/teamx/a.onnx"):
        with pytest.raises(InvalidArgumentError, match="not under any prefix"):
            check_allowed(parse_artifact_uri(outside), allowed)


def test_a_file_prefix_holds_after_links_are_resolved(tmp_path: Path) -> None:
    allowed_dir = tmp_path / "models"
    allowed_dir.mkdir()
    (tmp_path / "secret.onnx").write_bytes(b"x")
    (allowed_dir / "ok.onnx").write_bytes(b"x")
    (allowed_dir / "escape.onnx").symlink_to(tmp_path / "secret.onnx")
    allowed = [f"file://{allowed_dir}/"]
    check_allowed(parse_artifact_uri(f"file://{allowed_dir}/ok.onnx"), allowed)
    with pytest.raises(InvalidArgumentError, match="not under any prefix"):
        check_allowed(parse_artifact_uri(f"file://{allowed_dir}/escape.onnx"), allowed)
    with pytest.raises(InvalidArgumentError):
        check_allowed(parse_artifact_uri(f"file://{tmp_path}/secret.onnx"), allowed)


async def test_file_uris_read_the_file_in_chunks(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(DATA)
    assert await read_all(f"file://{tmp_path}/m.onnx") == DATA


async def test_a_missing_file_or_a_fifo_is_a_fetch_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactFetchError, match="No such file"):
        await read_all(f"file://{tmp_path}/missing.onnx")
    os.mkfifo(tmp_path / "pipe.onnx")  # must not hang the reader
    with pytest.raises(ArtifactFetchError, match="not a regular file"):
        await read_all(f"file://{tmp_path}/pipe.onnx")


async def test_http_uris_are_read_from_a_real_server(tmp_path: Path) -> None:
    with http_store(tmp_path / "www") as store:
        uri = store.put("m.onnx", DATA)
        assert await read_all(uri) == DATA
        with pytest.raises(ArtifactFetchError, match="HTTP 404"):
            await read_all(f"{store.url}/missing.onnx")
        with pytest.raises(ArtifactFetchError, match="redirects are not followed"):
            await read_all(f"{store.url}/moved/m.onnx")
        assert store.requests == ["/m.onnx", "/missing.onnx", "/moved/m.onnx"]
        port = store.url.rsplit(":", 1)[1]
    with pytest.raises(ArtifactFetchError, match="connection failed"):  # server gone
        await read_all(f"http://127.0.0.1:{port}/m.onnx", timeout_s=2.0)


async def test_s3_uris_are_read_from_a_real_s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with s3_store(monkeypatch) as s3:
        uri = s3.put("models", "fraud/v1.onnx", DATA)
        assert await read_all(uri, s3_endpoint_url=s3.endpoint_url) == DATA
        with pytest.raises(ArtifactFetchError, match="NoSuchKey"):
            await read_all("s3://models/fraud/v9.onnx", s3_endpoint_url=s3.endpoint_url)
        with pytest.raises(ArtifactFetchError, match="NoSuchBucket"):
            await read_all("s3://nobucket/v1.onnx", s3_endpoint_url=s3.endpoint_url)
