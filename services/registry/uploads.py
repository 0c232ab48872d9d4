"""An artifact upload in flight: streamed to a temp file and hashed as it arrives.

TempUpload's methods block (file I/O, hashing) and run in an executor. The size limit is
checked before a chunk is written, so an oversized upload costs at most one chunk of memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

from modelserve.errors import InvalidArgumentError


class TempUpload:
    def __init__(self, make_path: Callable[[], Path], max_bytes: int) -> None:
        """``make_path`` creates the (unique, private) temp path; called here, in the
        executor thread, since it touches the filesystem."""
        path = make_path()
        self.path = path
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        self._file: BinaryIO | None = path.open("wb")

    def check_room(self, incoming: int) -> None:
        """INVALID_ARGUMENT naming the limit when ``incoming`` more bytes would exceed it."""
        if self.size + incoming > self.max_bytes:
            raise InvalidArgumentError(
                f"artifact is larger than this registry accepts: limit {self.max_bytes} bytes"
                f"{_mib(self.max_bytes)}, got at least {self.size + incoming} bytes"
            )

    def write(self, chunk: bytes) -> None:
        self.check_room(len(chunk))
        if self._file is None:
            raise RuntimeError("upload already finished")
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def finish(self) -> str:
        """Flush and close the file; the hex sha256 of everything written."""
        if self._file is not None:
            self._file.close()
            self._file = None
        return self._hash.hexdigest()

    def discard(self) -> None:
        """Close and remove the temp file (it may already have been moved into the store)
        and the private directory it was made in."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()


@asynccontextmanager
async def temp_upload(
    create: Callable[[], TempUpload], executor: Executor, pending: set[asyncio.Future[None]]
) -> AsyncIterator[TempUpload]:
    """A TempUpload made by ``create`` in ``executor``, removed however the block ends,
    cancellation included.

    A push cancelled while its upload is being created must still wait for the file to exist
    before removing it; the cleanup is shielded and kept in ``pending`` (the loop holds tasks
    only weakly) so a second cancellation cannot leave the file behind.
    """
    loop = asyncio.get_running_loop()
    created = loop.run_in_executor(executor, create)
    try:
        yield await asyncio.shield(created)
    finally:
        cleanup = asyncio.ensure_future(_discard_when_created(created, executor))
        pending.add(cleanup)
        cleanup.add_done_callback(pending.discard)
        await asyncio.shield(cleanup)


async def _discard_when_created(created: asyncio.Future[TempUpload], executor: Executor) -> None:
    try:
        upload = await created
    except Exception:  # creation failed: nothing to remove
        return
    await asyncio.get_running_loop().run_in_executor(executor, upload.discard)


def _mib(size: int) -> str:
    return f" ({size / (1 << 20):.0f} MiB)" if size >= 1 << 20 else ""
