"""The Registry gRPC service: decodes requests, runs the store off the event loop, encodes.

Store calls go to one dedicated thread (SQLite has one writer; calls stay in order); file I/O,
hashing and ONNX inspection go to a small separate pool so a big upload never stalls a
GetVersion. Errors are domain exceptions; ErrorInterceptor maps them to statuses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from grpc import aio

from modelserve.artifact_uris import FetchOptions
from modelserve.errors import FailedPreconditionError, InvalidArgumentError
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc
from registry import by_reference, convert, lookup_models
from registry.onnx_inspect import inspect_model
from registry.ownership import TrafficOwners
from registry.policies.gate import PolicyGate
from registry.policies.readiness import FleetReader
from registry.policies.servicer import PolicyRpcs
from registry.store import RegistryStore
from registry.uploads import TempUpload, temp_upload
from registry.watch import WatchHub

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_MAX_ARTIFACT_BYTES = 2 << 30  # protobuf cannot hold a larger ONNX model anyway
CHUNK_BYTES = 1 << 20


class RegistryServicer(PolicyRpcs, registry_pb2_grpc.RegistryServicer):
    def __init__(
        self,
        *,
        store: RegistryStore,
        hub: WatchHub,
        max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
        store_executor: ThreadPoolExecutor | None = None,
        io_executor: Executor | None = None,
        is_composite: Callable[[str], bool] | None = None,
        owners: TrafficOwners | None = None,
        fleet: FleetReader | None = None,
        policy_ready_timeout_s: float = 300.0,
        artifact_uri_prefixes: Sequence[str] = (),
        artifact_fetch: FetchOptions | None = None,
    ) -> None:
        """``store_executor`` must have exactly one thread (store calls stay in commit order);
        ``io_executor`` bounds concurrent hashing/inspection (each inspection holds a whole
        model in memory). Executors not given are created here and shut down by ``close``.
        ``artifact_uri_prefixes``: where pushes by reference may point (none: refused)."""
        self._store = store
        self._is_composite = is_composite  # a model may not take a composite's name
        self._hub = hub
        self._max_artifact_bytes = max_artifact_bytes
        self._owned: list[Executor] = []
        self._cleanups: set[asyncio.Future[None]] = set()
        self._store_executor = store_executor or self._own(ThreadPoolExecutor(1, "registry-db"))
        self._io_executor = io_executor or self._own(ThreadPoolExecutor(2, "registry-io"))
        self._owners = owners or TrafficOwners()
        self._by_reference = by_reference.ArtifactReader(
            prefixes=artifact_uri_prefixes,
            options=artifact_fetch or FetchOptions(),
            executor=self._io_executor,
        )
        # Without a fleet reader (a registry on its own) no router is known: writes go in
        # force at once, as there is no caller traffic to protect.
        self._gate = PolicyGate(
            store=store,
            fleet=fleet,
            owners=self._owners,
            in_store=self._in_store,
            ready_timeout_s=policy_ready_timeout_s,
        )

    @property
    def gate(self) -> PolicyGate:
        return self._gate

    def close(self) -> None:
        """Shut down the executors this servicer created (after the server has stopped)."""
        for executor in self._owned:
            executor.shutdown(wait=True, cancel_futures=True)
        self._owned.clear()

    async def PushVersion(
        self,
        request_iterator: AsyncIterator[registry_pb2.PushVersionRequest],
        context: aio.ServicerContext[Any, Any],
    ) -> registry_pb2.ModelVersion:
        messages = aiter(request_iterator)
        # The header (names, labels, config) is checked before anything touches the disk: a
        # refused push creates no upload dir (T36: names refused before any filesystem access).
        header = _header_of(await anext(messages, None))
        new_upload = partial(TempUpload, self._store.new_upload_path, self._max_artifact_bytes)
        if header.artifact_uri is not None:  # refused before a byte is read from it
            await self._in_io(self._by_reference.check_allowed, header.artifact_uri)
        async with temp_upload(new_upload, self._io_executor, self._cleanups) as upload:
            if header.artifact_uri is not None:
                await self._read_by_reference(messages, header, upload)
            else:
                await self._receive(messages, header, upload)
            if self._is_composite is not None and self._is_composite(header.model):
                raise FailedPreconditionError(
                    f"'{header.model}' is a composite model; a model needs its own name"
                )
            lookup = header.config.lookup if header.config else None
            if lookup is not None:  # no ONNX file: the definition is the artifact
                await self._in_io(upload.write, lookup_models.definition_bytes(lookup))
            sha256 = await self._in_io(upload.finish)
            if header.artifact_uri is not None and header.sha256 != sha256:
                raise by_reference.mismatch(header.artifact_uri, header.sha256, upload.size, sha256)
            if header.sha256 and header.sha256 != sha256:
                raise FailedPreconditionError(
                    f"artifact sha256 mismatch: the header says {header.sha256}, the "
                    f"{upload.size} bytes received hash to {sha256}; the upload was corrupted"
                )
            if lookup is not None:
                signature = lookup_models.signature(lookup)
            else:
                signature = await self._in_io(inspect_model, upload.path)
            record = await self._in_store(
                lambda: self._store.push_version(
                    header.model,
                    upload.path,
                    sha256=sha256,
                    size_bytes=upload.size,
                    signature=signature,
                    config=header.config,
                    labels=header.labels,
                    description=header.description,
                    parent_version=header.parent_version,
                    artifact_uri=header.artifact_uri.text if header.artifact_uri else "",
                )
            )
        where = f" by reference to {record.artifact_uri}" if record.artifact_uri else ""
        log.info("pushed %s v%d (%s)%s", record.model, record.version, record.sha256[:12], where)
        return convert.version_to_proto(record)

    async def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: aio.ServicerContext[Any, Any]
    ) -> registry_pb2.ListModelsResponse:
        models = [convert.model_to_proto(m) for m in await self._in_store(self._store.list_models)]
        for model in models:
            model.owner = await self._owners.owner(model.name)
        return registry_pb2.ListModelsResponse(models=models)

    async def GetModel(
        self, request: registry_pb2.GetModelRequest, context: aio.ServicerContext[Any, Any]
    ) -> registry_pb2.Model:
        model = convert.model_to_proto(await self._in_store(self._store.get_model, request.name))
        model.owner = await self._owners.owner(model.name)
        return model

    async def GetVersion(
        self, request: registry_pb2.GetVersionRequest, context: aio.ServicerContext[Any, Any]
    ) -> registry_pb2.ModelVersion:
        record = await self._in_store(
            self._store.resolve, request.model, request.version, request.label
        )
        return convert.version_to_proto(record)

    async def SetLabel(
        self, request: registry_pb2.SetLabelRequest, context: aio.ServicerContext[Any, Any]
    ) -> registry_pb2.Model:
        model = await self._in_store(
            self._store.set_label, request.model, request.label, request.version
        )
        return convert.model_to_proto(model)

    async def DeleteLabel(
        self, request: registry_pb2.DeleteLabelRequest, context: aio.ServicerContext[Any, Any]
    ) -> registry_pb2.Model:
        model = await self._in_store(self._store.delete_label, request.model, request.label)
        return convert.model_to_proto(model)

    async def SetModelLoaded(
        self, request: registry_pb2.SetModelLoadedRequest, context: aio.ServicerContext[Any, Any]
    ) -> registry_pb2.Model:
        model = await self._in_store(self._store.set_model_loaded, request.model, request.loaded)
        log.info("model %s %s", request.model, "loaded" if request.loaded else "unloaded")
        return convert.model_to_proto(model)

    async def FetchArtifact(
        self, request: registry_pb2.FetchArtifactRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[registry_pb2.ArtifactChunk]:
        record = await self._in_store(self._store.resolve, request.model, request.version)
        if record.artifact_uri:  # no copy here: relayed from the URI to this worker
            first = True
            async for data in self._by_reference.stream(record, CHUNK_BYTES):
                size = record.size_bytes if first else 0
                yield registry_pb2.ArtifactChunk(
                    data=data, sha256=record.sha256 if first else "", size_bytes=size
                )
                first = False
            return
        path = await self._in_store(self._store.artifact_path_for, record)
        f = await self._in_io(_open_binary, path)
        try:
            first = True
            while data := await self._in_io(f.read, CHUNK_BYTES):
                if first:
                    yield registry_pb2.ArtifactChunk(
                        data=data, sha256=record.sha256, size_bytes=record.size_bytes
                    )
                    first = False
                else:
                    yield registry_pb2.ArtifactChunk(data=data)
        finally:
            f.close()

    async def Watch(
        self, request: registry_pb2.WatchRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[registry_pb2.WatchEvent]:
        # Subscribe first, then read the snapshot: a change committed in between is either in
        # the snapshot (its event is skipped by revision) or after it (delivered): no gap.
        with self._hub.subscribe() as subscription:
            snapshot = await self._in_store(self._store.snapshot)
            yield convert.snapshot_to_proto(snapshot)
            revision = snapshot.revision
            while True:
                event = await subscription.get()
                if event.revision <= revision:
                    continue
                revision = event.revision
                yield convert.event_to_proto(event)

    async def _receive(
        self,
        request_iterator: AsyncIterator[registry_pb2.PushVersionRequest],
        header: convert.PushHeader,
        upload: TempUpload,
    ) -> None:
        """Read every chunk after the header into ``upload``."""
        index = 1
        async for message in request_iterator:
            part = message.WhichOneof("part")
            if header.config is not None and header.config.lookup is not None:
                raise InvalidArgumentError(
                    f"model {header.model!r} is a lookup (config.lookup is set): its push "
                    "carries the header only, no artifact chunks"
                )
            if part != "chunk" or not message.chunk:
                raise InvalidArgumentError(
                    f"message {index} must be a non-empty chunk; got {_what(part)}"
                )
            upload.check_room(len(message.chunk))  # refuse before queueing the write
            await self._in_io(upload.write, message.chunk)
            index += 1
        if upload.size == 0 and (header.config is None or header.config.lookup is None):
            raise InvalidArgumentError(
                f"upload for model {header.model!r} carried no artifact bytes: send the ONNX "
                "file in chunk messages after the header"
            )

    async def _read_by_reference(
        self,
        request_iterator: AsyncIterator[registry_pb2.PushVersionRequest],
        header: convert.PushHeader,
        upload: TempUpload,
    ) -> None:
        """A push by reference is the header alone: refuse any chunk, then read the
        artifact from its URI into ``upload`` (hashed like an upload, removed afterwards)."""
        assert header.artifact_uri is not None
        async for _ in request_iterator:
            raise by_reference.refuse_chunks(header.model, 1)

        async def write(chunk: bytes) -> None:
            await self._in_io(upload.write, chunk)

        await self._by_reference.fill(header.artifact_uri, upload, write)

    def _own(self, executor: ThreadPoolExecutor) -> ThreadPoolExecutor:
        self._owned.append(executor)
        return executor

    async def _in_store(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._store_executor, fn, *args)

    async def _in_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io_executor, fn, *args)


def _header_of(first: registry_pb2.PushVersionRequest | None) -> convert.PushHeader:
    """The decoded and checked header the first PushVersion message must carry."""
    if first is None:
        raise InvalidArgumentError("empty upload: expected a header message, then chunks")
    part = first.WhichOneof("part")
    if part != "header":
        raise InvalidArgumentError(
            f"the first PushVersion message must carry the header; got {_what(part)}"
        )
    return convert.header_from_proto(first.header)


def _what(part: str | None) -> str:
    return {"header": "a header", "chunk": "an empty chunk"}.get(part or "", "an empty message")


def _open_binary(path: Path) -> BinaryIO:
    return path.open("rb")
