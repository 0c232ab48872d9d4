"""Registry test kit: a real store in tmp_path behind a real grpc.aio server on port 0,
plus small helpers (no mocks). Imported by name: pytest puts this directory on sys.path."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import onnx
import pytest
from grpc import aio

from modelserve.artifact_uris import FetchOptions
from modelserve.cli import demo_models
from modelserve.interceptors import ErrorInterceptor
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc
from registry.config import ConfigOverrides
from registry.onnx_inspect import inspect_model
from registry.records import VersionRecord
from registry.registry_servicer import RegistryServicer
from registry.store import RegistryStore
from registry.watch import WatchHub

Predicate = Callable[[], bool | Awaitable[bool]]

# The backend stores opened through this kit use: "" (SQLite in their data dir) unless the
# ``database_url`` fixture (conftest.py) set a PostgreSQL URL for the test.
DATABASE_URL = ""


def open_store(data_dir: Path, **kwargs: Any) -> RegistryStore:
    """A RegistryStore on the test's backend (see ``DATABASE_URL``)."""
    return RegistryStore(data_dir, database_url=DATABASE_URL, **kwargs)


def make_legacy_sqlite(path: Path, user_version: int) -> None:
    """Turn a current registry file into what a build before migrations left at
    ``user_version`` (1-3): the later tables and column gone, no migration ledger."""
    later = {
        1: "DROP TABLE policies; DROP TABLE pending_policies; "
        "ALTER TABLE models DROP COLUMN unloaded;",
        2: "DROP TABLE pending_policies; ALTER TABLE models DROP COLUMN unloaded;",
        3: "",
    }[user_version]
    conn = sqlite3.connect(path)
    conn.executescript(
        f"{later} DROP TABLE schema_migrations; DROP TABLE changes; DROP TABLE leases; "
        "ALTER TABLE versions DROP COLUMN artifact_uri; "
        f"PRAGMA user_version = {user_version};"
    )
    conn.close()


async def eventually(predicate: Predicate, within: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``predicate`` until it holds; fail with a clear message after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


def model_bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


FRAUD_V1 = model_bytes(demo_models.fraud(1))
FRAUD_V2 = model_bytes(demo_models.fraud(2))


class Registry:
    """A running registry: store + hub + servicer + grpc.aio server + a client stub."""

    def __init__(
        self,
        data_dir: Path,
        max_artifact_bytes: int,
        hub_queue_size: int,
        artifact_uri_prefixes: Sequence[str] = (),
        artifact_fetch: FetchOptions | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.max_artifact_bytes = max_artifact_bytes
        self.hub_queue_size = hub_queue_size
        self.artifact_uri_prefixes = artifact_uri_prefixes
        self.artifact_fetch = artifact_fetch
        self.stopped = False

    async def start(self) -> Registry:
        self.hub = WatchHub(queue_size=self.hub_queue_size)
        self.store = open_store(self.data_dir, on_change=self.hub.publish_threadsafe)
        # Our own store thread (as the composition root would pass), so tests can queue work
        # on it to order a race deterministically.
        self.store_executor = ThreadPoolExecutor(1, "test-registry-db")
        self.servicer = RegistryServicer(
            store=self.store,
            hub=self.hub,
            max_artifact_bytes=self.max_artifact_bytes,
            store_executor=self.store_executor,
            artifact_uri_prefixes=self.artifact_uri_prefixes,
            artifact_fetch=self.artifact_fetch,
        )
        self.server = aio.server(interceptors=[ErrorInterceptor()])
        registry_pb2_grpc.add_RegistryServicer_to_server(self.servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = registry_pb2_grpc.RegistryStub(self.channel)
        return self

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.hub.close()
        await self.channel.close()
        await self.server.stop(grace=1)
        self.servicer.close()
        self.store_executor.shutdown(wait=True)
        self.store.close()

    async def push(
        self,
        model: str,
        data: bytes,
        *,
        labels: Sequence[str] = (),
        chunk_size: int = 64 * 1024,
        sha256: str = "",
        config: registry_pb2.ServingConfig | None = None,
        description: str = "",
        parent_version: int = 0,
    ) -> registry_pb2.ModelVersion:
        header = registry_pb2.PushVersionRequest.Header(
            model=model,
            labels=list(labels),
            sha256=sha256,
            description=description,
            parent_version=parent_version,
        )
        if config is not None:
            header.config.CopyFrom(config)
        messages = [registry_pb2.PushVersionRequest(header=header)]
        messages += [
            registry_pb2.PushVersionRequest(chunk=data[i : i + chunk_size])
            for i in range(0, len(data), chunk_size)
        ]
        return await self.push_raw(messages)

    async def push_by_reference(
        self,
        model: str,
        uri: str,
        sha256: str,
        *,
        labels: Sequence[str] = (),
        chunks: Sequence[bytes] = (),
    ) -> registry_pb2.ModelVersion:
        """PushVersion with a header naming ``uri`` (plus ``chunks``, which must be refused)."""
        header = registry_pb2.PushVersionRequest.Header(
            model=model, labels=list(labels), sha256=sha256, artifact_uri=uri
        )
        messages = [registry_pb2.PushVersionRequest(header=header)]
        messages += [registry_pb2.PushVersionRequest(chunk=c) for c in chunks]
        return await self.push_raw(messages)

    async def push_raw(
        self, messages: Iterable[registry_pb2.PushVersionRequest]
    ) -> registry_pb2.ModelVersion:
        async def stream() -> AsyncIterator[registry_pb2.PushVersionRequest]:
            for message in messages:
                yield message

        result: registry_pb2.ModelVersion = await self.stub.PushVersion(stream(), timeout=30)
        return result

    async def fetch(self, model: str, version: int = 0) -> list[registry_pb2.ArtifactChunk]:
        request = registry_pb2.FetchArtifactRequest(model=model, version=version)
        return [chunk async for chunk in self.stub.FetchArtifact(request, timeout=30)]

    def artifact_files(self) -> list[Path]:
        return sorted((self.data_dir / "artifacts").rglob("*.onnx"))

    def temp_entries(self) -> list[Path]:
        return list((self.data_dir / "tmp").iterdir())


async def expect_status(call: Awaitable[Any], code: grpc.StatusCode, *fragments: str) -> str:
    """Await ``call``; it must fail with ``code`` and a message holding every fragment."""
    with pytest.raises(aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, (info.value.code(), info.value.details())
    details = info.value.details() or ""
    for fragment in fragments:
        assert fragment in details, (fragment, details)
    return details


def stage(store: RegistryStore, data: bytes) -> tuple[Path, str, Any]:
    """Write ``data`` as an upload in ``store``'s temp dir: (path, sha256, signature)."""
    path = store.new_upload_path()
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest(), inspect_model(path)


def push_direct(
    store: RegistryStore,
    model: str,
    data: bytes,
    *,
    config: ConfigOverrides | None = None,
    labels: Sequence[str] = (),
) -> VersionRecord:
    """Push through the store API directly (what the servicer does after receiving)."""
    path, sha256, signature = stage(store, data)
    try:
        return store.push_version(
            model,
            path,
            sha256=sha256,
            size_bytes=len(data),
            signature=signature,
            config=config,
            labels=labels,
        )
    finally:
        path.unlink(missing_ok=True)
