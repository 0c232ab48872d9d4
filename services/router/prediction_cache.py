"""The prediction cache: a version's answer to the exact same (enriched) input, kept a while.

Opt-in per version (``ServingConfig.prediction_cache``). The key is the model, version and
artifact sha256 plus a sha256 over the request as the model would see it: every input's name,
datatype, shape and bytes in name order, the requested outputs and any parameter that may
change the computation. The version is in the key, so moving a label never answers with
another version's cached output. A hit skips the worker entirely; a miss is forwarded and
its answer stored after it has been returned (the caller never waits for the store). Any
backend failure bypasses the cache and is counted; it never fails a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
from collections.abc import Mapping

from modelserve.calls import Call
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import registry_pb2
from modelserve.tensors import MERGED_REQUESTS_PARAMETER
from router.cache_backends import CacheBackend, CacheError
from router.forwarding import ToVersion
from router.metrics import (
    PREDICTION_CACHE_ERRORS,
    PREDICTION_CACHE_HITS,
    PREDICTION_CACHE_MISSES,
)

log = logging.getLogger(__name__)


# Parameters that do not change what is computed: the merged-request count only feeds the
# worker's statistics; perf_analyzer's flag only matters to decoupled streams.
INERT_PARAMETERS = frozenset({MERGED_REQUESTS_PARAMETER, "triton_enable_empty_final_response"})
# Above this many input bytes, hashing leaves the event loop (CONVENTIONS.md habit 8).
INLINE_HASH_BYTES = 256 * 1024
# Stores waiting to be written; beyond this an answer is simply not cached.
MAX_PENDING_PUTS = 256


def cache_key(request: pb.ModelInferRequest, version: registry_pb2.ModelVersion) -> str:
    """A stable key for ``request`` as answered by ``version`` (see the module docstring)."""
    digest = hashlib.sha256()

    def put(data: bytes) -> None:  # length-prefixed, so no two field sequences collide
        digest.update(struct.pack("<Q", len(data)))
        digest.update(data)

    raws = list(request.raw_input_contents)  # upb copies a bytes field on every read
    put(b"raw" if raws else b"typed")
    for index in sorted(range(len(request.inputs)), key=lambda i: request.inputs[i].name):
        tensor = request.inputs[index]
        put(tensor.name.encode())
        put(tensor.datatype.encode())
        put(struct.pack(f"<{len(tensor.shape)}q", *tensor.shape))
        put(_parameters(tensor.parameters))
        put(raws[index] if raws else tensor.contents.SerializeToString(deterministic=True))
    for output in sorted(request.outputs, key=lambda o: o.name):
        put(output.name.encode())
        put(_parameters(output.parameters))
    put(_parameters(request.parameters, skip=INERT_PARAMETERS))
    return f"{version.model}:{version.version}:{version.sha256[:16]}:{digest.hexdigest()}"


def _parameters(
    params: Mapping[str, pb.InferParameter], skip: frozenset[str] = frozenset()
) -> bytes:
    return b"".join(
        struct.pack("<Q", len(k)) + k.encode() + params[k].SerializeToString(deterministic=True)
        for k in sorted(params)
        if k not in skip
    )


class PredictionCache:
    def __init__(self, *, backend: CacheBackend, budget_cap_s: float, max_value_bytes: int) -> None:
        self._backend = backend
        self._budget_cap_s = budget_cap_s
        self._max_value_bytes = max_value_bytes
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def backend(self) -> str:
        return self._backend.name

    async def infer(
        self,
        request: pb.ModelInferRequest,
        version: registry_pb2.ModelVersion,
        call: Call,
        forward: ToVersion,
    ) -> pb.ModelInferResponse:
        labels = (version.model, str(version.version))
        key = await self._key(request, version)
        cached = await self._get(key, call)
        if cached is not None:
            response = pb.ModelInferResponse.FromString(cached)
            response.id = request.id  # the answer is shared; the id is the caller's
            PREDICTION_CACHE_HITS.labels(*labels).inc()
            return response
        PREDICTION_CACHE_MISSES.labels(*labels).inc()
        response = await forward(request, version, call)
        self._put_later(key, response, version.config.prediction_cache.ttl_seconds)
        return response

    async def _key(self, request: pb.ModelInferRequest, version: registry_pb2.ModelVersion) -> str:
        size = sum(len(raw) for raw in request.raw_input_contents)
        if size <= INLINE_HASH_BYTES:
            return cache_key(request, version)
        return await asyncio.to_thread(cache_key, request, version)

    async def _get(self, key: str, call: Call) -> bytes | None:
        try:
            return await self._backend.get(key, call.deadline.side_call(self._budget_cap_s))
        except CacheError as exc:
            PREDICTION_CACHE_ERRORS.labels(self._backend.name, "get", exc.reason).inc()
            return None

    def _put_later(self, key: str, response: pb.ModelInferResponse, ttl_s: int) -> None:
        if ttl_s <= 0:
            return
        if len(self._pending) >= MAX_PENDING_PUTS:
            PREDICTION_CACHE_ERRORS.labels(self._backend.name, "put", "backlog").inc()
            return
        # Stored without the caller's id (never hand one caller's id to another); the id is
        # put back before the response leaves, which is after this returns.
        request_id, response.id = response.id, ""
        value = response.SerializeToString()
        response.id = request_id
        if len(value) > self._max_value_bytes:
            return
        task = asyncio.get_running_loop().create_task(self._put(key, value, ttl_s))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _put(self, key: str, value: bytes, ttl_s: int) -> None:
        try:
            await self._backend.put(key, value, ttl_s, self._budget_cap_s)
        except CacheError as exc:
            PREDICTION_CACHE_ERRORS.labels(self._backend.name, "put", exc.reason).inc()

    async def flush(self) -> None:
        """Wait for the answers being stored (tests; a store never fails a caller)."""
        await asyncio.gather(*self._pending, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await self._backend.close()
