"""Versions pushed by reference: the artifact stays at its URI (modelserve.artifact_uris).

Decision: the registry keeps NO copy. At push time it reads the artifact once into a temp
upload (hashed, size-limited, inspected like an upload, then removed), so a version is only
recorded when its bytes verify; afterwards it streams the artifact from the URI to workers
that cannot reach it themselves (FetchArtifact). The URI's owner is the artifact's storage:
replacing the object there makes every later fetch fail verification, never serve other bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from contextlib import aclosing

from modelserve.artifact_uris import (
    ArtifactFetchError,
    ArtifactUri,
    FetchOptions,
    check_allowed,
    parse_artifact_uri,
    read_chunks,
)
from modelserve.errors import FailedPreconditionError, InvalidArgumentError
from registry.records import VersionRecord
from registry.uploads import TempUpload


class ArtifactReader:
    """Reads artifacts by reference for one registry: its allowed prefixes, its timeouts."""

    def __init__(
        self, *, prefixes: Sequence[str], options: FetchOptions, executor: Executor
    ) -> None:
        self.prefixes = tuple(p for p in prefixes if p)
        self.options = options
        self._executor = executor  # file and S3 reads block: the registry's io pool

    def check_allowed(self, uri: ArtifactUri) -> None:
        """Blocking (resolves file:// symlinks): run it in an executor."""
        check_allowed(uri, self.prefixes)

    async def fill(
        self, uri: ArtifactUri, upload: TempUpload, write: Callable[[bytes], Awaitable[None]]
    ) -> None:
        """Read the artifact at ``uri`` into ``upload`` through ``write`` (which runs the
        blocking write off the loop); the size limit is checked before each write."""
        async with aclosing(read_chunks(uri, self.options, executor=self._executor)) as chunks:
            async for chunk in chunks:
                upload.check_room(len(chunk))
                await write(chunk)
        if upload.size == 0:
            raise FailedPreconditionError(f"the artifact at {uri.text} is empty")

    async def stream(self, record: VersionRecord, chunk_bytes: int) -> AsyncIterator[bytes]:
        """The artifact of ``record`` from its URI, for FetchArtifact. Refuses to send more
        than the recorded size (the worker verifies the sha256 of what it gets)."""
        uri = parse_artifact_uri(record.artifact_uri)
        options = FetchOptions(
            timeout_s=self.options.timeout_s,
            s3_endpoint_url=self.options.s3_endpoint_url,
            chunk_bytes=chunk_bytes,
        )
        sent = 0
        async with aclosing(read_chunks(uri, options, executor=self._executor)) as chunks:
            async for chunk in chunks:
                sent += len(chunk)
                if sent > record.size_bytes:
                    raise ArtifactFetchError(
                        f"the artifact of {record.model!r} version {record.version} at "
                        f"{uri.text} is now larger than the {record.size_bytes} bytes pushed; "
                        "it was changed there"
                    )
                yield chunk


def refuse_chunks(header_model: str, index: int) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"message {index} of a push by reference of {header_model!r} carries artifact bytes: "
        "with artifact_uri the push is the header alone"
    )


def mismatch(uri: ArtifactUri, expected: str, size: int, found: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"artifact sha256 mismatch: the header says {expected}, the {size} bytes at "
        f"{uri.text} hash to {found}; nothing was stored"
    )
