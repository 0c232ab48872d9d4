"""Client helpers for the registry used by the CLI, ``up`` and tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc

CHUNK = 1 << 20


async def _push_stream(
    model: str,
    path: Path,
    labels: Sequence[str],
    config: registry_pb2.ServingConfig | None,
    description: str,
    parent_version: int,
) -> AsyncIterator[registry_pb2.PushVersionRequest]:
    header = registry_pb2.PushVersionRequest.Header(
        model=model, labels=list(labels), description=description, parent_version=parent_version
    )
    if config is not None:
        header.config.CopyFrom(config)
    yield registry_pb2.PushVersionRequest(header=header)
    with path.open("rb") as f:  # small reads; the registry's limits bound the total
        while chunk := f.read(CHUNK):
            yield registry_pb2.PushVersionRequest(chunk=chunk)


async def push_version(
    stub: registry_pb2_grpc.RegistryStub,
    model: str,
    path: Path,
    *,
    labels: Sequence[str] = (),
    config: registry_pb2.ServingConfig | None = None,
    description: str = "",
    parent_version: int = 0,
    timeout: float = 120.0,
) -> registry_pb2.ModelVersion:
    """Stream ``path`` to the registry as a new version of ``model``."""
    result: registry_pb2.ModelVersion = await stub.PushVersion(
        _push_stream(model, path, labels, config, description, parent_version), timeout=timeout
    )
    return result
