"""Real artifact stores for the push-by-reference tests: an HTTP server over a directory and
an S3 endpoint (moto's server mode: real HTTP S3 on loopback), both on port 0, in threads."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# The credentials moto accepts; exported so boto3's standard chain finds them (the registry
# and workers read the same variables in the e2e suite).
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test output stays readable


@dataclass
class HttpStore:
    directory: Path
    url: str  # http://127.0.0.1:PORT (no trailing slash)
    requests: list[str]

    def put(self, name: str, data: bytes) -> str:
        (self.directory / name).write_bytes(data)
        return f"{self.url}/{name}"


@contextmanager
def http_store(directory: Path) -> Iterator[HttpStore]:
    """``http.server`` serving ``directory`` on 127.0.0.1:0; records each GET path."""
    directory.mkdir(parents=True, exist_ok=True)
    seen: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            if self.path.startswith("/moved/"):  # a redirect, which must not be followed
                self.send_response(302)
                self.send_header("Location", self.path.removeprefix("/moved"))
                self.end_headers()
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpStore(directory, f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class S3Store:
    endpoint_url: str
    client: Any

    def put(self, bucket: str, key: str, data: bytes) -> str:
        try:
            self.client.create_bucket(Bucket=bucket)
        except self.client.exceptions.BucketAlreadyOwnedByYou:
            pass
        self.client.put_object(Bucket=bucket, Key=key, Body=data)
        return f"s3://{bucket}/{key}"


@contextmanager
def s3_store(monkeypatch: pytest.MonkeyPatch | None = None) -> Iterator[S3Store]:
    """moto's ThreadedMotoServer on 127.0.0.1:0 and a boto3 client for it; with
    ``monkeypatch``, the AWS credentials are exported for in-process readers too."""
    boto3 = pytest.importorskip("boto3", reason="the s3 extra (boto3) is not installed")
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    if monkeypatch is not None:
        for name, value in S3_ENV.items():
            monkeypatch.setenv(name, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.session.Session(
        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_ENV["AWS_DEFAULT_REGION"],
    ).client("s3", endpoint_url=endpoint)
    try:
        yield S3Store(endpoint, client)
    finally:
        server.stop()
