"""Client helpers for the registry used by the CLI, ``up`` and tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc

CHUNK = 1 << 20


async def _push_stream(
    header: registry_pb2.PushVersionRequest.Header, path: Path | None
) -> AsyncIterator[registry_pb2.PushVersionRequest]:
    yield registry_pb2.PushVersionRequest(header=header)
    if path is None:  # by reference: the header is the whole push
        return
    with path.open("rb") as f:  # small reads; the registry's limits bound the total
        while chunk := f.read(CHUNK):
            yield registry_pb2.PushVersionRequest(chunk=chunk)


async def push_version(
    stub: registry_pb2_grpc.RegistryStub,
    model: str,
    path: Path | None,
    *,
    labels: Sequence[str] = (),
    config: registry_pb2.ServingConfig | None = None,
    description: str = "",
    parent_version: int = 0,
    timeout: float = 120.0,
    sha256: str = "",
    artifact_uri: str = "",
) -> registry_pb2.ModelVersion:
    """Stream ``path`` to the registry as a new version of ``model``; or, with
    ``artifact_uri`` (and ``sha256``) and no path, push it by reference."""
    header = registry_pb2.PushVersionRequest.Header(
        model=model,
        labels=list(labels),
        description=description,
        parent_version=parent_version,
        sha256=sha256,
        artifact_uri=artifact_uri,
    )
    if config is not None:
        header.config.CopyFrom(config)
    result: registry_pb2.ModelVersion = await stub.PushVersion(
        _push_stream(header, path), timeout=timeout
    )
    return result
