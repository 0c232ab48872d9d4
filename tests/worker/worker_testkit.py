"""Worker test kit: a fake registry serving FetchArtifact from bytes (no mocks). Imported by
name: pytest puts this directory on sys.path."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import onnx
from grpc import aio

from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc

CHUNK = 4096  # small, so every demo artifact arrives in several chunks


def write_model(directory: Path, name: str, model: onnx.ModelProto) -> Path:
    path = directory / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@dataclass
class FakeRegistry(registry_pb2_grpc.RegistryServicer):
    """Serves FetchArtifact from bytes it was given; records every request it sees."""

    artifacts: dict[tuple[str, int], bytes] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)
    corrupt: bool = False  # flip one byte of the data, keep the announced sha256
    # Watch: the snapshot it sends (then it holds the stream open, as the registry does).
    models: list[registry_pb2.Model] = field(default_factory=list)
    # model -> an event FetchArtifact waits for before answering (a load held mid-fetch).
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    # model -> how many more FetchArtifact calls answer UNAVAILABLE (a flaky registry).
    failures: dict[str, int] = field(default_factory=dict)

    def add(self, model: str, version: int, data: bytes) -> str:
        self.artifacts[(model, version)] = data
        return hashlib.sha256(data).hexdigest()

    async def FetchArtifact(
        self, request: registry_pb2.FetchArtifactRequest, context: aio.ServicerContext
    ) -> AsyncIterator[registry_pb2.ArtifactChunk]:
        self.calls.append((request.model, request.version))
        gate = self.gates.get(request.model)
        if gate is not None:
            await gate.wait()
        if self.failures.get(request.model, 0) > 0:
            self.failures[request.model] -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "registry briefly unavailable")
            return
        data = self.artifacts.get((request.model, request.version))
        if data is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"model {request.model!r} has no version {request.version}",
            )
            return
        sha = hashlib.sha256(data).hexdigest()
        sent = bytes([data[0] ^ 0xFF]) + data[1:] if self.corrupt else data
        for offset in range(0, len(sent), CHUNK):
            chunk = registry_pb2.ArtifactChunk(data=sent[offset : offset + CHUNK])
            if offset == 0:
                chunk.sha256, chunk.size_bytes = sha, len(data)
            yield chunk

    async def Watch(
        self, request: registry_pb2.WatchRequest, context: aio.ServicerContext
    ) -> AsyncIterator[registry_pb2.WatchEvent]:
        yield registry_pb2.WatchEvent(revision=1, snapshot=True, models=self.models)
        await asyncio.Event().wait()  # held open until the caller leaves


@dataclass
class RegistryServer:
    fake: FakeRegistry
    stub: registry_pb2_grpc.RegistryAsyncStub
