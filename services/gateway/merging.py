"""Merging concurrent requests for one model version into one internal call.

Each Python hop costs ~330 µs of CPU per call it forwards (DESIGN.md, Performance), so the
gateway sends batches inward: requests bound for the same version, with the same input layout
and requested outputs, share a lane; a lane sends a request alone while it has fewer than
``max_in_flight`` calls out (no added latency at low load), and otherwise queues it, so that
when a call returns, everything queued leaves together as one call (adaptive batching: batch
size follows load, no timer). The routing decision (the version) is taken before a request
enters a lane, so a merged call only ever holds requests for one version.

Rows are concatenated as raw bytes (the gateway never decodes tensors) and the response is cut
back per request by rows. If a merged call is refused as INVALID_ARGUMENT, its requests are
retried one by one so only the faulty one fails.

A merged call runs in the context (trace, logs) of the oldest request it carries, its deadline
is the latest of theirs, and it carries every member's ``x-request-id``, so each client's id
reaches the router's and worker's logs.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client import Counter

from modelserve.auth.identity import CALLER_METADATA
from modelserve.calls import Call
from modelserve.deadlines import Deadline
from modelserve.errors import DeadlineExceededError, InvalidArgumentError, ModelServeError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.tensors import MERGED_REQUESTS_PARAMETER, Layout, raw_layout

DEFAULT_MAX_BYTES = 8 << 20  # half the default 16 MiB receive limit: room for framing
Forward = Callable[[pb.ModelInferRequest, Call], Awaitable[pb.ModelInferResponse]]
LaneKey = tuple[object, ...]


@dataclass(slots=True)
class _Item:
    request: pb.ModelInferRequest
    rows: int
    call: Call
    future: asyncio.Future[pb.ModelInferResponse]
    context: contextvars.Context  # the caller's (its trace span), for a call made on its behalf
    size: int  # serialized bytes
    call_task: asyncio.Task[None] | None = None  # the merged call it left in
    batch: list[_Item] | None = None


@dataclass
class _Lane:
    pending: deque[_Item] = field(default_factory=deque)
    in_flight: int = 0
    gathering: bool = False  # a call returned with requests queued: the next one gathers more
    rows: int = 0  # rows in ``pending``


# Request parameters that do not change what a unary inference computes: perf_analyzer sends
# triton_enable_empty_final_response on every request (it only matters to decoupled streams).
INERT_PARAMETERS = frozenset({"triton_enable_empty_final_response"})


def lane_key(
    request: pb.ModelInferRequest, version: int, fallback: int = 0, layout: Layout | None = None
) -> LaneKey | None:
    """The merge key of ``request``, or None when it must travel alone. ``layout`` is
    ``raw_layout(request)`` when the caller has it already. (Loops, not generators: this runs
    per request, and most requests have no outputs named and one parameter at most.)"""
    for name in request.parameters:
        if name not in INERT_PARAMETERS:
            return None  # a parameter may change the computation: never mix it with others
    if layout is None:
        layout = raw_layout(request)
        if layout is None:
            return None  # typed tensors or tensor parameters: not merged
    lane = []
    rows = -1
    for name, datatype, shape in layout:
        if not shape:
            return None
        if rows < 0:
            rows = shape[0]
        elif shape[0] != rows:
            return None
        lane.append((name, datatype, shape[1:]))
    if rows <= 0:
        return None
    outputs: tuple[str, ...] = ()
    requested = request.outputs
    if requested:
        for o in requested:
            if o.parameters:
                return None
        outputs = tuple(o.name for o in requested)
    # The fallback is part of the key: a merged call carries one (``merged_call``).
    return (request.model_name, version, fallback, tuple(lane), outputs)


MERGED_CALLS = Counter(
    "modelserve_gateway_merged_calls_total",
    "Calls the gateway sent carrying more than one caller's request",
    ["model"],
)
MERGED_REQUESTS = Counter(
    "modelserve_gateway_merged_requests_total",
    "Callers' requests that travelled inside a merged call",
    ["model"],
)


class RequestMerger:
    def __init__(
        self,
        *,
        forward: Forward,
        max_in_flight: int = 2,
        max_bytes: int = DEFAULT_MAX_BYTES,
        gather_turns: int = 0,
    ) -> None:
        self._forward = forward
        self._max_in_flight = max(1, max_in_flight)
        # After a call returns with requests queued, the next call waits this many event loop
        # turns (or until a full call is queued) before it leaves: see _gather.
        self._gather_turns = max(0, gather_turns)
        # A merged call must stay within what the next hop accepts (its receive limit), and a
        # merge must not multiply the gateway's memory: tensor bytes per call are capped.
        self._max_bytes = max_bytes
        self._lanes: dict[LaneKey, _Lane] = {}
        self.merged_calls = 0  # calls that carried more than one request (for tests/metrics)

    async def infer(
        self,
        request: pb.ModelInferRequest,
        version: int,
        max_rows: int,
        call: Call,
        layout: Layout | None = None,
    ) -> pb.ModelInferResponse:
        key = lane_key(request, version, call.fallback(), layout) if max_rows > 0 else None
        if key is None:
            return await self._forward(request, call)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if lane.in_flight < self._max_in_flight and not lane.pending:
            lane.in_flight += 1
            try:
                return await self._forward(request, call)
            finally:
                self._returned(key, lane, max_rows)
        loop = asyncio.get_running_loop()
        item = _Item(
            request,
            request.inputs[0].shape[0],
            call,
            loop.create_future(),
            contextvars.copy_context(),
            # Its size on the wire (tensors and all), without copying a payload out of upb.
            request.ByteSize(),
        )
        lane.pending.append(item)
        lane.rows += item.rows
        if lane.in_flight < self._max_in_flight and not lane.gathering:
            self._dispatch(key, lane, max_rows)
        try:
            return await item.future
        except asyncio.CancelledError:
            # The caller left (its deadline or a cancel). Once every caller of a merged call
            # has, the call is cancelled too, and the cancel travels to the router and worker.
            if item.call_task is not None and item.batch is not None:
                if all(i.future.done() for i in item.batch):
                    item.call_task.cancel()
            raise

    def _dispatch(self, key: LaneKey, lane: _Lane, max_rows: int) -> None:
        """Send what is queued, as one call per ``max_rows`` rows, while slots are free."""
        while lane.pending and lane.in_flight < self._max_in_flight:
            batch: list[_Item] = []
            rows = size = 0
            while (
                lane.pending
                and rows + lane.pending[0].rows <= max(max_rows, 1)
                and (not batch or size + lane.pending[0].size <= self._max_bytes)
            ):
                item = lane.pending.popleft()
                lane.rows -= item.rows
                if item.future.done():
                    continue  # the caller went away
                if item.call.deadline.expired():
                    item.future.set_exception(
                        DeadlineExceededError("deadline exceeded while queued")
                    )
                    continue
                batch.append(item)
                rows += item.rows
                size += item.size
            if not batch:
                if lane.pending and lane.pending[0].rows > max_rows:
                    big = lane.pending.popleft()  # validated elsewhere; send it alone
                    lane.rows -= big.rows
                    batch, rows = [big], big.rows
                else:
                    break
            lane.in_flight += 1
            task = asyncio.get_running_loop().create_task(
                self._send(key, lane, batch, max_rows), context=batch[0].context
            )
            for item in batch:
                item.call_task, item.batch = task, batch
        if not lane.pending and lane.in_flight == 0:
            self._lanes.pop(key, None)

    async def _send(self, key: LaneKey, lane: _Lane, batch: list[_Item], max_rows: int) -> None:
        try:
            if len(batch) == 1:
                await self._settle_one(batch[0])
                return
            self.merged_calls += 1
            model = batch[0].request.model_name  # a lane is one catalog-known model version
            MERGED_CALLS.labels(model).inc()
            MERGED_REQUESTS.labels(model).inc(len(batch))
            try:
                response = await self._forward(
                    merge_requests([i.request for i in batch]), merged_call(batch)
                )
            except InvalidArgumentError:
                # One bad request must not fail its neighbours: retry each alone.
                await asyncio.gather(*(self._settle_one(i) for i in batch))
                return
            except ModelServeError as exc:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return
            for item, part in zip(batch, split_response(response, batch), strict=True):
                if not item.future.done():
                    item.future.set_result(part)
        finally:
            self._returned(key, lane, max_rows)

    def _returned(self, key: LaneKey, lane: _Lane, max_rows: int) -> None:
        """A call of ``lane`` is back: send what queued meanwhile, now or after _gather."""
        lane.in_flight -= 1
        if self._gather_turns and lane.pending and not lane.gathering:
            lane.gathering = True
            asyncio.get_running_loop().call_soon(self._gather, key, lane, max_rows, 1)
        else:
            self._dispatch(key, lane, max_rows)

    def _gather(self, key: LaneKey, lane: _Lane, max_rows: int, turn: int) -> None:
        """One event-loop turn after a call returned with requests queued: wait another
        until ``gather_turns`` have passed or a full call is queued, then send.

        Requests were queued, so the lane is loaded, and a loaded gateway reads more requests
        in during these turns: fewer, larger calls, each of which saves every hop behind a
        whole RPC. Turns, not a timer: uvloop's timers are 1 ms coarse, and 64 idle turns take
        ~70 us. Off by default: it trades c=16 throughput and c=64 tail latency for saturated
        throughput (figures in docs/architecture.md, Merging and batching). A lane with
        nothing queued (c=1) never gathers.
        """
        if turn < self._gather_turns and lane.rows < max_rows:
            asyncio.get_running_loop().call_soon(self._gather, key, lane, max_rows, turn + 1)
            return
        lane.gathering = False
        self._dispatch(key, lane, max_rows)

    async def _settle_one(self, item: _Item) -> None:
        try:
            result = await self._forward(item.request, item.call)
        except ModelServeError as exc:
            if not item.future.done():
                item.future.set_exception(exc)
            return
        if not item.future.done():
            item.future.set_result(result)


_MERGED_KEYS = ("x-request-id", CALLER_METADATA)


def merged_call(batch: Sequence[_Item]) -> Call:
    """The call a merged request makes: the latest deadline and every member's request id
    and caller identity, each once (routing keys stay behind: the version is decided)."""
    ends = [i.call.deadline.at for i in batch]
    deadline = Deadline(None if None in ends else max(e for e in ends if e is not None))
    forwarded = tuple(
        dict.fromkeys(kv for i in batch for kv in i.call.forwarded if kv[0] in _MERGED_KEYS)
    )
    return Call(deadline, forwarded).with_fallback(batch[0].call.fallback())  # one per lane


def merge_requests(requests: Sequence[pb.ModelInferRequest]) -> pb.ModelInferRequest:
    """One request whose tensors are the rows of ``requests`` in order (raw bytes joined)."""
    first = requests[0]
    total = sum(r.inputs[0].shape[0] for r in requests)
    merged = pb.ModelInferRequest(
        model_name=first.model_name, model_version=first.model_version, outputs=first.outputs
    )
    merged.parameters[MERGED_REQUESTS_PARAMETER].int64_param = len(requests)
    for index, tensor in enumerate(first.inputs):
        merged.inputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=[total, *tensor.shape[1:]]
        )
        merged.raw_input_contents.append(b"".join(r.raw_input_contents[index] for r in requests))
    return merged


def split_response(
    response: pb.ModelInferResponse, batch: Sequence[_Item]
) -> list[pb.ModelInferResponse]:
    """Cut a merged response back into one response per request, by rows.

    Each part starts as a copy of a header built once per row count (name, version, output
    tensors and shapes): CopyFrom of a template is ~4x cheaper in upb than building the same
    message field by field (0.7 vs 3.0 us a part, the gateway's biggest per-request cost)."""
    outputs = response.outputs
    raws = [response.raw_output_contents[i] for i in range(len(outputs))]  # each copied once
    rows = [i.rows for i in batch]
    cuts = []  # per output tensor: (start, end) per request
    inner_shapes = []
    for index, tensor in enumerate(outputs):
        inner = list(tensor.shape[1:])
        inner_shapes.append(inner)
        cuts.append(_row_offsets(raws[index], tensor.datatype, rows, math.prod(inner)))
    templates: dict[int, pb.ModelInferResponse] = {}
    parts = []
    for position, item in enumerate(batch):
        template = templates.get(item.rows)
        if template is None:
            template = templates[item.rows] = pb.ModelInferResponse(
                model_name=response.model_name, model_version=response.model_version
            )
            for tensor, inner in zip(outputs, inner_shapes, strict=True):
                template.outputs.add(
                    name=tensor.name, datatype=tensor.datatype, shape=[item.rows, *inner]
                )
        part = pb.ModelInferResponse()
        part.CopyFrom(template)
        if item.request.id:
            part.id = item.request.id
        for raw, offsets in zip(raws, cuts, strict=True):
            start, end = offsets[position]
            part.raw_output_contents.append(raw[start:end])
        parts.append(part)
    return parts


def _row_offsets(
    raw: bytes, datatype: str, rows: Sequence[int], per_row: int
) -> list[tuple[int, int]]:
    total_rows = sum(rows)
    out: list[tuple[int, int]] = []
    if datatype != "BYTES":
        row_bytes = len(raw) // total_rows if total_rows else 0
        start = 0
        for n in rows:
            out.append((start, start + n * row_bytes))
            start += n * row_bytes
        return out
    position = 0
    for n in rows:  # BYTES: walk the 4-byte length prefixes element by element
        start = position
        for _ in range(n * per_row):
            (length,) = struct.unpack_from("<I", raw, position)
            position += 4 + length
        out.append((start, position))
    return out
