"""The worker's content-addressed artifact cache: ONNX files fetched from the registry, verified.

Files are named only by their validated sha256 (``<sha>.onnx``), never by model names
(RELIABILITY.md rule 4). A download streams into a hidden temp file in the same directory
while hashing, is checked against the sha256 the worker was told AND the one the registry
announces, then fsynced and renamed into place, so a reader never sees a partial file.

A version pushed by reference (``artifact_uri``) is fetched straight from its URI when direct
fetch is on (modelserve.artifact_uris), verified the same way; when the worker cannot read the
URI (unreachable, no credentials, a file:// path not mounted here) it falls back to the
registry's FetchArtifact, which relays the artifact from the URI. Bytes that arrive but do not
verify are refused outright: the registry would relay the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Set
from concurrent.futures import Executor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import grpc

from modelserve.artifact_uris import (
    ArtifactFetchError,
    FetchOptions,
    parse_artifact_uri,
    read_chunks,
)
from modelserve.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    ModelServeError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from modelserve.proto.modelserve.v1 import registry_pb2
from modelserve.storage import fsync_dir

if TYPE_CHECKING:
    from modelserve.proto.modelserve.v1 import registry_pb2_grpc

log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
ARTIFACT_SUFFIX = ".onnx"
PARTIAL_SUFFIX = ".partial"
# protobuf cannot parse a single message over 2 GiB, so no self-contained ONNX file is larger.
DEFAULT_MAX_ARTIFACT_BYTES = 2 << 30
_HASH_BLOCK = 1 << 20

# Registry statuses that keep their meaning for the worker's caller; the rest (UNAVAILABLE,
# UNKNOWN, INTERNAL, transport failures) mean "the registry could not be used": retryable.
_KEPT_CODES: dict[grpc.StatusCode, type[ModelServeError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
}


def validate_sha256(value: str) -> str:
    """Return ``value`` if it is 64 lowercase hex characters, else raise INVALID_ARGUMENT."""
    if not SHA256_RE.fullmatch(value):
        shown = value if len(value) <= 72 else value[:72] + "..."
        raise InvalidArgumentError(
            f"invalid sha256 {shown!r}: expected 64 lowercase hexadecimal characters"
        )
    return value


class ArtifactCache:
    """Verified ONNX artifacts in one directory, keyed by sha256."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
        executor: Executor | None = None,
        direct_fetch: bool = True,
        fetch_options: FetchOptions | None = None,
    ) -> None:
        """``executor`` runs file I/O and hashing (None: the loop's default, bounded, pool).
        ``direct_fetch``: read artifacts pushed by reference from their URI (else always
        through the registry); ``fetch_options``: that read's timeout and S3 endpoint."""
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.max_bytes = max_bytes
        self.direct_fetch = direct_fetch
        self.fetch_options = fetch_options or FetchOptions()
        self._executor = executor
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}
        self._partials: set[str] = set()

    def path_for(self, sha256: str) -> Path:
        """Where the artifact with this sha256 lives (whether or not it is there yet)."""
        return self.directory / f"{validate_sha256(sha256)}{ARTIFACT_SUFFIX}"

    async def fetch(
        self,
        stub: registry_pb2_grpc.RegistryStub,
        model: str,
        version: int,
        expected_sha256: str,
        timeout: float = 120,
        *,
        artifact_uri: str = "",
    ) -> Path:
        """The verified local file for ``model`` ``version``, downloaded unless cached:
        from ``artifact_uri`` when set and direct fetch is on, else (or when the URI cannot
        be read) from the registry.

        Raises InvalidArgumentError for a malformed sha256, FailedPreconditionError when the
        bytes do not verify (nothing is left on disk), and the registry's own error for a
        refused fetch (NotFoundError for an unknown model/version; UnavailableError when the
        registry cannot be reached).
        """
        sha = validate_sha256(expected_sha256)
        label = f"{model} v{version}"
        path = self.path_for(sha)
        async with self._locked(sha):  # one download per sha; the others then reuse it
            if await self._reusable(path, sha, label):
                return path
            if artifact_uri and self.direct_fetch:
                try:
                    await self._download_direct(artifact_uri, sha, path, label)
                    log.info(
                        "fetched artifact for %s from %s (sha256 %s)", label, artifact_uri, sha
                    )
                    return path
                except (ArtifactFetchError, InvalidArgumentError) as exc:
                    log.warning(
                        "cannot read the artifact of %s from its URI (%s); fetching it through "
                        "the registry",
                        label,
                        exc.message,
                    )
            await self._download(stub, model, version, sha, path, timeout)
            log.info("fetched artifact for %s (sha256 %s)", label, sha)
            return path

    def evict(self, keep: Set[str]) -> list[str]:
        """Remove cached artifacts whose sha256 is not in ``keep``; returns the removed shas.

        Also removes temp files a crashed download left behind. Files being fetched right now
        are kept, as is anything the cache did not name. Unlinks are quick metadata calls.
        """
        removed = []
        busy = set(self._locks)
        for entry in os.scandir(self.directory):
            name = entry.name
            if name.endswith(PARTIAL_SUFFIX) and name not in self._partials:
                _unlink(Path(entry.path))
                continue
            sha = name.removesuffix(ARTIFACT_SUFFIX)
            if name.endswith(ARTIFACT_SUFFIX) and SHA256_RE.fullmatch(sha):
                if sha not in keep and sha not in busy:
                    _unlink(Path(entry.path))
                    removed.append(sha)
        return removed

    async def _reusable(self, path: Path, sha: str, label: str) -> bool:
        digest = await self._in_executor(_hash_file, path)
        if digest is None:
            return False
        if digest == sha:
            return True
        log.warning("cached artifact for %s no longer matches its sha256; fetching again", label)
        await self._in_executor(_unlink, path)
        return False

    async def _download(
        self,
        stub: registry_pb2_grpc.RegistryStub,
        model: str,
        version: int,
        sha: str,
        path: Path,
        deadline_s: float,
    ) -> None:
        label = f"{model} v{version}"
        partial = _Partial(self.directory / f".{sha}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
        self._partials.add(partial.path.name)
        request = registry_pb2.FetchArtifactRequest(model=model, version=version)
        # Any: a stub on a grpc.aio channel answers with an async stream call.
        call: Any = stub.FetchArtifact(request, timeout=deadline_s)
        try:
            await self._in_executor(partial.open)
            announced = await self._receive(call, partial, sha, label)
            digest = partial.hexdigest()
            if digest != sha or partial.size != announced:
                raise FailedPreconditionError(
                    f"artifact for {label} failed verification: expected sha256 {sha}, got "
                    f"{digest} ({partial.size} bytes received, {announced} announced)"
                )
            await self._in_executor(partial.commit, path)
        except grpc.aio.AioRpcError as exc:
            raise _registry_error(exc, label) from exc
        finally:
            call.cancel()  # no-op once the stream ended; stops it when we gave up early
            # Synchronous on purpose: it must run even when this task is being cancelled.
            partial.discard()
            self._partials.discard(partial.path.name)

    async def _download_direct(self, uri_text: str, sha: str, path: Path, label: str) -> None:
        """Stream the artifact from its URI into a partial file, verify, rename into place.
        ArtifactFetchError (or InvalidArgumentError for a URI this build cannot parse) when
        it cannot be read: the caller then asks the registry; FailedPreconditionError when
        what was read does not verify."""
        uri = parse_artifact_uri(uri_text)
        partial = _Partial(self.directory / f".{sha}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
        self._partials.add(partial.path.name)
        try:
            await self._in_executor(partial.open)
            chunks = read_chunks(uri, self.fetch_options, executor=self._executor)
            async with contextlib.aclosing(chunks):
                async for data in chunks:
                    if partial.size + len(data) > self.max_bytes:
                        raise FailedPreconditionError(
                            f"artifact for {label} at {uri.text} is larger than the "
                            f"{self.max_bytes} bytes this worker accepts"
                        )
                    await self._in_executor(partial.write, data)
            digest = partial.hexdigest()
            if digest != sha:
                raise FailedPreconditionError(
                    f"artifact for {label} failed verification: expected sha256 {sha}, the "
                    f"{partial.size} bytes at {uri.text} hash to {digest} (changed there "
                    "since the push?)"
                )
            await self._in_executor(partial.commit, path)
        finally:
            partial.discard()  # synchronous on purpose, as in _download
            self._partials.discard(partial.path.name)

    async def _receive(self, call: Any, partial: _Partial, sha: str, label: str) -> int:
        """Write the stream to ``partial``; returns the size the registry announced."""
        announced = -1
        async for chunk in call:
            if announced < 0:
                announced = self._check_header(chunk, sha, label)
            if partial.size + len(chunk.data) > announced:
                raise FailedPreconditionError(
                    f"artifact for {label} failed verification: the registry sent more than "
                    f"the {announced} bytes it announced"
                )
            if chunk.data:
                await self._in_executor(partial.write, chunk.data)
        if announced < 0:
            raise FailedPreconditionError(f"the registry sent no data for the artifact of {label}")
        return announced

    def _check_header(self, chunk: registry_pb2.ArtifactChunk, sha: str, label: str) -> int:
        """Check the first chunk's sha256 and size before any byte is written."""
        announced_sha = chunk.sha256.lower()
        if announced_sha != sha:
            raise FailedPreconditionError(
                f"artifact for {label} failed verification: expected sha256 {sha}, the "
                f"registry announces {announced_sha[:64] or 'none'} (is the version out of date?)"
            )
        if not 0 < chunk.size_bytes <= self.max_bytes:
            raise FailedPreconditionError(
                f"artifact for {label} announces {chunk.size_bytes} bytes; this worker "
                f"accepts 1 to {self.max_bytes}"
            )
        return chunk.size_bytes

    @contextlib.asynccontextmanager
    async def _locked(self, sha: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(sha, asyncio.Lock())
        self._lock_users[sha] = self._lock_users.get(sha, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._lock_users[sha] -= 1
            if not self._lock_users[sha]:  # last user: keep the map bounded
                del self._lock_users[sha], self._locks[sha]

    async def _in_executor(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


class _Partial:
    """A temp file being downloaded and hashed; every method but discard runs in an executor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._file: IO[bytes] | None = None
        self._hash = hashlib.sha256()
        self._committed = False

    def open(self) -> None:
        # "x": never reuse or follow anything already at this name.
        self._file = open(self.path, "xb")

    def write(self, data: bytes) -> None:
        assert self._file is not None
        self._hash.update(data)
        self._file.write(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def commit(self, target: Path) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.path, target)
        self._committed = True
        fsync_dir(target.parent)  # make the rename itself survive a crash

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()  # waits for a write still running in a thread (buffer lock)
        if not self._committed:
            _unlink(self.path)


def _hash_file(path: Path) -> str | None:
    """The file's sha256, or None when there is no such file."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _registry_error(exc: grpc.aio.AioRpcError, label: str) -> ModelServeError:
    details = " ".join((exc.details() or "").split())[:200]
    error = _KEPT_CODES.get(exc.code())
    if error is not None:
        return error(f"registry refused the artifact of {label}: {details}")
    return UnavailableError(
        f"registry could not serve the artifact of {label} ({exc.code().name}): {details}"
    )
