"""Materialisation: a feature view's offline source into the online store, client-side.

Like Feast's ``materialize``, it runs where the file is, never inside the feature store
(RELIABILITY.md rule 8: no network API chooses a file path):

1. plan: read the view and its watermark, then read and check the whole file (off the event
   loop) and keep the newest row per entity with an event time in [max(start, watermark),
   end). A bad file raises SourceError here, before anything is written.
2. write: WriteOnlineFeatures in bounded batches. Each entity's row is one value and each
   batch lands atomically, so a run that dies half-way leaves every entity with its old or
   its new row; the store never lets an older event replace a newer one.
3. commit: CommitMaterialization(end) moves the watermark, only after every batch succeeded.
   A failed run is simply rerun: the watermark has not moved, and re-writing the same events
   is idempotent (equal event times: the later write, with the same bytes, wins).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from modelserve.cli.feature_sources import (
    DEFAULT_CHUNK_ROWS,
    MAX_EVENT_MS,
    LatestRows,
    SourceError,
    SourceSpec,
    read_latest,
)
from modelserve.proto.modelserve.v1 import featurestore_pb2
from modelserve.tensors import to_proto_tensor

DEFAULT_BATCH_ROWS = 1000
# Well under the feature store's 16 MiB receive limit; bounds what one write holds in memory.
DEFAULT_BATCH_BYTES = 4 << 20
WRITE_TIMEOUT_S = 30.0
# Writes are idempotent (see above), so one that met UNAVAILABLE (a Redis blip, a restart) is
# retried a few times before the run fails; anything else fails the run at once.
WRITE_ATTEMPTS = 3
_BACKOFF_S = 0.05

Stub = Any  # featurestore_pb2_grpc.FeatureStoreStub on an aio channel


@dataclass(frozen=True)
class MaterializationPlan:
    """What a run will write: the newest row per entity of ``source`` in [from_ms, end_ms)."""

    view: str
    source: Path
    start_ms: int
    end_ms: int
    watermark_ms: int  # before the run
    from_ms: int  # max(start, watermark), or start when the watermark is ignored
    rows: LatestRows


@dataclass(frozen=True)
class BatchWritten:
    sent: int  # rows in the batch
    written: int  # rows the store kept (the others were older than what it had)


@dataclass(frozen=True)
class MaterializationReport:
    view: str
    source: str
    from_ms: int
    end_ms: int
    rows_read: int
    rows_in_window: int
    entities: int  # rows sent: the newest row per entity
    written: int
    watermark_before_ms: int
    watermark_after_ms: int

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = dict(self.__dict__)
        for name in ("from_ms", "end_ms", "watermark_before_ms", "watermark_after_ms"):
            doc[name.removesuffix("_ms")] = iso(doc.pop(name))
        return doc

    def line(self) -> str:
        return (
            f"materialized {self.view} from {self.source}: [{iso(self.from_ms)}, "
            f"{iso(self.end_ms)}): {self.rows_read} rows read, {self.rows_in_window} in the "
            f"window, {self.entities} entities sent, {self.written} stored; watermark "
            f"{iso(self.watermark_before_ms)} -> {iso(self.watermark_after_ms)}"
        )


def iso(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, UTC).isoformat(timespec="milliseconds")


async def plan(
    stub: Stub,
    view_name: str,
    *,
    start_ms: int,
    end_ms: int,
    source: Path | None = None,
    ignore_watermark: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    timeout: float = 10.0,
) -> MaterializationPlan:
    """Read the view, its state and the whole source file; write nothing."""
    if not 0 <= start_ms < end_ms <= MAX_EVENT_MS:
        raise ValueError(
            f"the window [{start_ms}, {end_ms}) must be non-empty, start before end, from 1970 on"
        )
    request = featurestore_pb2.GetFeatureViewRequest(name=view_name)
    view = await stub.GetFeatureView(request, timeout=timeout)
    state = await stub.GetMaterializationState(
        featurestore_pb2.GetMaterializationStateRequest(view=view_name), timeout=timeout
    )
    spec = SourceSpec.from_view(view)
    if source is None and not view.source.path:
        raise SourceError(f"view {view_name!r} names no source file; pass --source FILE")
    # The view's path is read here, on the caller's machine, as the person who applied it
    # wrote it; the feature store itself never opens it.
    path = source if source is not None else Path(view.source.path)
    from_ms = start_ms if ignore_watermark else max(start_ms, state.watermark_unix_ms)
    rows = await asyncio.to_thread(
        read_latest, spec, path, from_ms=from_ms, until_ms=end_ms, chunk_rows=chunk_rows
    )
    return MaterializationPlan(
        view=view.name,
        source=path,
        start_ms=start_ms,
        end_ms=end_ms,
        watermark_ms=state.watermark_unix_ms,
        from_ms=from_ms,
        rows=rows,
    )


def write_requests(
    p: MaterializationPlan,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> Iterator[featurestore_pb2.WriteOnlineFeaturesRequest]:
    """The plan's rows as write requests of at most ``batch_rows`` rows and (but for a single
    row larger than that) ``batch_bytes`` bytes; the row count shrinks when rows are big."""
    total, start, rows = len(p.rows), 0, max(1, batch_rows)
    while start < total:
        stop = min(start + rows, total)
        request = _request(p, start, stop)
        size = request.ByteSize()
        if size > batch_bytes and stop - start > 1:
            rows = max(1, min((stop - start) // 2, (stop - start) * batch_bytes // size))
            continue
        yield request
        start = stop


def _request(p: MaterializationPlan, start: int, stop: int) -> Any:
    keys, events, columns = p.rows.slice(start, stop)
    return featurestore_pb2.WriteOnlineFeaturesRequest(
        view=p.view,
        entity_keys=keys,
        values=[to_proto_tensor(name, values) for name, values in columns.items()],
        event_unix_ms=events,
    )


async def write_batches(
    stub: Stub,
    p: MaterializationPlan,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> AsyncIterator[BatchWritten]:
    """Write the plan, one batch at a time, yielding after each one that landed."""
    for request in write_requests(p, batch_rows=batch_rows, batch_bytes=batch_bytes):
        written = await _write(stub, request)
        yield BatchWritten(sent=len(request.entity_keys), written=written)


async def _write(stub: Stub, request: featurestore_pb2.WriteOnlineFeaturesRequest) -> int:
    for attempt in range(WRITE_ATTEMPTS):
        try:
            reply = await stub.WriteOnlineFeatures(request, timeout=WRITE_TIMEOUT_S)
            return int(reply.written)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == WRITE_ATTEMPTS:
                raise
        await asyncio.sleep(_BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


async def commit(
    stub: Stub, p: MaterializationPlan, rows_written: int, *, timeout: float = 10.0
) -> featurestore_pb2.MaterializationState:
    """Move the view's watermark to the plan's end: call only once every batch landed."""
    request = featurestore_pb2.CommitMaterializationRequest(
        view=p.view, up_to_unix_ms=p.end_ms, rows_written=rows_written
    )
    state: featurestore_pb2.MaterializationState = await stub.CommitMaterialization(
        request, timeout=timeout
    )
    return state


async def materialize(
    stub: Stub,
    view_name: str,
    *,
    start_ms: int,
    end_ms: int,
    source: Path | None = None,
    ignore_watermark: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: bool | None = None,
) -> MaterializationReport:
    """Plan, write and commit one run. ``progress``: a tqdm bar on stderr (None: if a TTY)."""
    p = await plan(
        stub,
        view_name,
        start_ms=start_ms,
        end_ms=end_ms,
        source=source,
        ignore_watermark=ignore_watermark,
    )
    written = 0
    bar = tqdm(
        total=len(p.rows),
        unit="row",
        desc=f"materialize {p.view}",
        disable=None if progress is None else not progress,
    )
    with bar:
        async for batch in write_batches(stub, p, batch_rows=batch_rows):
            written += batch.written
            bar.update(batch.sent)
    state = await commit(stub, p, written)
    return MaterializationReport(
        view=p.view,
        source=str(p.source),
        from_ms=p.from_ms,
        end_ms=p.end_ms,
        rows_read=p.rows.rows_read,
        rows_in_window=p.rows.rows_in_window,
        entities=len(p.rows),
        written=written,
        watermark_before_ms=p.watermark_ms,
        watermark_after_ms=state.watermark_unix_ms,
    )
