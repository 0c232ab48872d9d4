"""The one adapter between batch jobs and the worker's ONNX Runtime session code.

Batch scoring runs the model with exactly what the worker runs (``worker.sessions``: the same
session options, provider choice, external-data refusal and error mapping), one session per
executor process. That code is asyncio-shaped; a batch executor is not, so each process keeps
a private event loop and runs the session inline on it (no thread hop per batch).

The artifact is fetched with the worker's own cache code too (sha256 checked while it
streams, renamed into place only when verified). Only this module imports ``worker``: when
the worker's session code moves, this file is the one to rewire.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelserve.errors import FailedPreconditionError
from modelserve.tensors import TensorSpec
from worker.artifacts import ArtifactCache
from worker.sessions import ModelSession

_HASH_BLOCK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


async def fetch_artifact(stub: Any, cache_dir: Path, model: str, version: int, sha256: str) -> Path:
    """The verified local ONNX file of ``model`` ``version`` (downloaded unless cached)."""
    return await ArtifactCache(cache_dir).fetch(stub, model, version, sha256)


class Scorer:
    """One model version loaded in this process, verified against its sha256."""

    def __init__(self, loop: asyncio.AbstractEventLoop, session: ModelSession) -> None:
        self._loop = loop
        self._session = session
        # The session and its loop run one batch at a time; a second caller waits (executors
        # have a scorer each, so this is never contended in a run).
        self._lock = threading.Lock()
        self.outputs: tuple[TensorSpec, ...] = session.outputs

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        sha256: str,
        model: str,
        version: int,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        threads: int = 1,
    ) -> Scorer:
        """Check the file's sha256, then create the session (``threads`` intra-op threads)."""
        got = sha256_of(path)
        if got != sha256:
            raise FailedPreconditionError(
                f"artifact of {model} v{version} failed verification: expected sha256 "
                f"{sha256}, got {got}"
            )
        loop = asyncio.new_event_loop()
        session = loop.run_until_complete(
            ModelSession.load(
                path,
                model=model,
                version=version,
                inputs=inputs,
                outputs=outputs,
                execution_provider="auto",
                instance_count=1,
                intra_op_threads=threads,
            )
        )
        # Batches here are large and the process has nothing else to do: run on this thread.
        session.inline = True
        return cls(loop, session)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            return self._loop.run_until_complete(self._session.run(feeds))

    def close(self) -> None:
        self._session.close()
        self._loop.close()
