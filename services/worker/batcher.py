"""Dynamic batching in front of one model version's sessions (Triton-style, adaptive).

Requests that arrive together are concatenated along the batch dimension, run once and split
back, so the per-run cost (executor hop, ORT dispatch) is paid once per batch.

- One item is one caller's tensors; it may carry several rows (the gateway sends pre-merged
  batches) and is never split across runs. An item larger than ``max_batch_size`` is refused.
- Items are grouped by a compatibility key (input names, dtypes, non-batch dims, requested
  outputs): a batch holds items of one key only, in arrival order. The key whose oldest item
  has waited longest goes first, so no key starves another.
- No latency is added at low load: up to ``instance_count`` batches run at once, and with
  ``max_queue_delay_us`` 0 a batch takes whatever is queued the moment an instance frees up
  (while one batch runs, the next accumulates). With a delay, a batch waits up to that long
  after its oldest item for ``max_batch_size`` rows, or for the largest preferred size; when
  the delay runs out it takes the largest preferred size it can reach, else everything.
  (Preferred sizes only matter with a delay: without one, waiting is never worth it.)
- The queue holds at most ``max_queue_size`` items; beyond that ``submit`` answers UNAVAILABLE
  at once so the router retries on another replica (RELIABILITY.md).
- An item whose deadline passes while it is queued is answered DEADLINE_EXCEEDED and never
  run; one that waited ``max_queue_wait_s`` (500 ms, RELIABILITY.md) with deadline to spare
  is answered UNAVAILABLE, so the router retries it on another replica within the deadline;
  a cancelled caller's item is dropped if it is not running yet.
- A model error fails every item of that batch with the same error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from modelserve.deadlines import Deadline
from modelserve.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    ModelServeError,
    UnavailableError,
)
from worker.metrics import (
    BATCH_SIZE,
    BATCHES_RUNNING,
    QUEUE_CAPACITY,
    QUEUE_DEPTH,
    QUEUE_REFUSED,
    QUEUE_SECONDS,
)
from worker.sessions import ModelSession
from worker.stats import VersionStats

NO_DEADLINE = Deadline()

# (sorted (input name, dtype, non-batch dims)), requested outputs ((): all of them)
Key = tuple[tuple[tuple[str, str, tuple[int, ...]], ...], tuple[str, ...]]


@dataclass(frozen=True)
class Result:
    """One caller's outputs and where its time went (for Triton-style statistics)."""

    outputs: dict[str, np.ndarray]
    rows: int  # this item's rows
    batch_rows: int  # rows of the model run it was part of
    queue_ns: int
    input_ns: int
    infer_ns: int
    output_ns: int


@dataclass(eq=False)
class _Item:
    inputs: Mapping[str, np.ndarray]
    rows: int
    key: Key
    deadline: float | None  # loop time
    arrived: float  # loop time, for the queue delay
    arrived_ns: int  # perf_counter_ns, for statistics
    future: asyncio.Future[Result]
    queued: bool = True
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)
    batch: _Running | None = field(default=None, repr=False)  # set once it runs


@dataclass(eq=False)
class _Running:
    """A batch being run: cancelled (and its ONNX Runtime run stopped) once every caller in
    it has gone."""

    items: list[_Item]
    task: asyncio.Task[None] | None = None

    def abandon_if_orphaned(self) -> bool:
        if self.task is None or self.task.done():
            return False
        if all(item.future.done() for item in self.items):
            self.task.cancel()
            return True
        return False


class DynamicBatcher:
    """Queues requests for one version and runs them in batches on its ``ModelSession``."""

    def __init__(
        self,
        session: ModelSession,
        *,
        model: str,
        version: int,
        max_batch_size: int,
        max_queue_delay_us: int,
        preferred_batch_sizes: Sequence[int],
        max_queue_size: int,
        stats: VersionStats,
        max_queue_wait_s: float = 0.5,
    ) -> None:
        if max_batch_size < 1 or max_queue_size < 1:
            raise InvalidArgumentError(
                f"{model} v{version}: batching needs max_batch_size >= 1 and max_queue_size "
                f">= 1; got {max_batch_size} and {max_queue_size}"
            )
        self._session = session
        self._label = f"{model} v{version}"
        self._max_rows = max_batch_size
        self._delay = max_queue_delay_us / 1e6
        self._preferred = sorted({s for s in preferred_batch_sizes if 0 < s <= max_batch_size})
        self._max_queue = max_queue_size
        self._max_wait = max_queue_wait_s
        self._stats = stats
        self._batch_hist = BATCH_SIZE.labels(model, str(version))
        self._queue_hist = QUEUE_SECONDS.labels(model, str(version))
        self._series = (model, str(version))
        QUEUE_DEPTH.labels(*self._series).set_function(lambda: self._waiting)
        QUEUE_CAPACITY.labels(*self._series).set(max_queue_size)
        BATCHES_RUNNING.labels(*self._series).set_function(lambda: self._running)
        self._slots = max(session.instance_count, 1)
        self._queues: dict[Key, deque[_Item]] = {}
        self._waiting = 0
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        # Delays the timer has declared over: timers may fire a little early (uvloop rounds
        # to milliseconds), and the timer, not a clock comparison, decides that a wait ended.
        self._flushed_through = float("-inf")
        self._closed = False

    @property
    def queued(self) -> int:
        """Items waiting for a model run."""
        return self._waiting

    async def submit(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
        deadline: Deadline = NO_DEADLINE,
    ) -> Result:
        """Queue one item and wait for its share of a batched run.

        ``deadline`` is the caller's; without one an item waits as long as it takes.
        Raises InvalidArgumentError for an item that cannot be batched, UnavailableError when
        the queue is full or the version is closed, DeadlineExceededError when the deadline
        passes before the item runs, and whatever the model run raised.
        """
        if self._closed:
            raise UnavailableError(f"{self._label} is not loaded on this worker")
        rows = self._rows_of(inputs)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if deadline.expired():
            self._refused("deadline")
            raise DeadlineExceededError(f"the deadline passed before {self._label} queued it")
        if self._waiting >= self._max_queue:
            self._refused("queue_full")
            raise UnavailableError(
                f"{self._label} queue full ({self._waiting} waiting, limit {self._max_queue}); "
                "retry on another replica"
            )
        key: Key = (
            tuple(sorted((n, a.dtype.str, tuple(a.shape[1:])) for n, a in inputs.items())),
            tuple(output_names or ()),
        )
        remaining = deadline.remaining()
        at = None if remaining is None else now + remaining  # timers run on the loop's clock
        item = _Item(inputs, rows, key, at, now, time.perf_counter_ns(), loop.create_future())
        self._queues.setdefault(key, deque()).append(item)
        self._waiting += 1
        self._pump()
        if item.queued:  # only a waiting item needs a timer
            # RELIABILITY.md queue-wait policy: waiting longer than min(deadline, max wait) is
            # UNAVAILABLE (retry elsewhere) unless it is the caller's deadline that ran out.
            policy_end = now + self._max_wait
            if at is not None and at <= policy_end:
                item.expiry = loop.call_at(at, self._expire, item)
            else:
                item.expiry = loop.call_at(policy_end, self._expire_wait, item)
        try:
            return await item.future
        except asyncio.CancelledError:
            if item.queued:
                self._refused("cancelled")
            self._withdraw(item)  # a caller that gave up must not cost a model run
            if item.batch is not None:
                item.batch.abandon_if_orphaned()  # nor keep one running that nobody reads
            raise

    def close(self) -> None:
        """Refuse new items and answer the queued ones UNAVAILABLE; running batches finish."""
        if self._closed:
            return
        self._closed = True
        for gauge in (QUEUE_DEPTH, QUEUE_CAPACITY, BATCHES_RUNNING):
            with contextlib.suppress(KeyError):  # a gone version leaves no stale series
                gauge.remove(*self._series)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for queue in list(self._queues.values()):
            for item in list(queue):
                self._withdraw(item)
                self._refused("unloaded")
                _fail(item, UnavailableError(f"{self._label} was unloaded while queued"))

    def _rows_of(self, inputs: Mapping[str, np.ndarray]) -> int:
        if not inputs:
            raise InvalidArgumentError(f"{self._label}: a batched request needs inputs")
        rows = {name: a.shape[0] if a.ndim else None for name, a in inputs.items()}
        firsts = set(rows.values())
        if None in firsts or len(firsts) != 1:
            got = ", ".join(f"{n}: {r}" for n, r in rows.items())
            raise InvalidArgumentError(
                f"{self._label}: every input needs the same first (batch) dimension; got {got}"
            )
        count = int(next(iter(firsts)) or 0)
        if count > self._max_rows:
            raise InvalidArgumentError(
                f"{self._label}: expected batch size <= max_batch_size {self._max_rows}, "
                f"got {count}"
            )
        return count

    def _refused(self, reason: str) -> None:
        """Count an item turned away or dropped before its run (T12, T15)."""
        QUEUE_REFUSED.labels(*self._series, reason).inc()

    def _expire(self, item: _Item) -> None:
        item.expiry = None
        if item.queued:
            self._withdraw(item)
            self._refused("deadline")
            _fail(
                item,
                DeadlineExceededError(
                    f"the deadline passed while the request waited for {self._label}"
                ),
            )

    def _expire_wait(self, item: _Item) -> None:
        item.expiry = None
        if item.queued:
            self._withdraw(item)
            self._refused("queue_wait")
            _fail(
                item,
                UnavailableError(
                    f"{self._label} queue wait exceeded {self._max_wait * 1000:.0f} ms; "
                    "retry on another replica"
                ),
            )

    def _withdraw(self, item: _Item) -> None:
        """Take a still-queued item out of the queue (no answer is given here)."""
        if item.expiry is not None:
            item.expiry.cancel()
            item.expiry = None
        if not item.queued:
            return
        item.queued = False
        queue = self._queues[item.key]
        queue.remove(item)
        if not queue:
            del self._queues[item.key]
        self._waiting -= 1

    def _pump(self) -> None:
        """Start batches while an instance is free and a batch is ready; else arm the timer."""
        while self._running < self._slots and self._waiting and not self._closed:
            batch = self._next_batch()
            if batch is None:
                break
            self._running += 1
            running = _Running(batch)
            for item in batch:
                item.batch = running
            task = running.task = asyncio.create_task(self._run(batch), name=f"batch {self._label}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not self._waiting and self._timer is not None:  # nothing left to wait for
            self._timer.cancel()
            self._timer = None

    def _next_batch(self) -> list[_Item] | None:
        loop = asyncio.get_running_loop()
        horizon = max(loop.time(), self._flushed_through)
        due: float | None = None
        # Oldest head first: with one delay for all keys, the oldest is also the first due.
        for queue in sorted(self._queues.values(), key=lambda q: q[0].arrived_ns):
            take = self._take(queue, queue[0].arrived + self._delay <= horizon)
            if take:
                items = [queue.popleft() for _ in range(take)]
                return self._taken(items)
            due = queue[0].arrived + self._delay if due is None else due
        if due is not None and (self._timer is None or self._timer_due != due):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_due = due
            self._timer = loop.call_at(due, self._on_timer, due)
        return None

    def _take(self, queue: deque[_Item], waited: bool) -> int:
        """How many items from the head of ``queue`` to run now (0: keep waiting)."""
        cuts: list[int] = []  # rows after each item that fits
        rows, full = 0, False
        for item in queue:
            if rows + item.rows > self._max_rows:
                full = True
                break
            rows += item.rows
            cuts.append(rows)
            if rows == self._max_rows:
                full = True
                break
        if full or self._delay == 0:
            return len(cuts)
        if self._preferred and self._preferred[-1] in cuts:
            return cuts.index(self._preferred[-1]) + 1
        if not waited:
            return 0
        preferred = [i for i, c in enumerate(cuts) if c in self._preferred]
        return preferred[-1] + 1 if preferred else len(cuts)

    def _taken(self, items: list[_Item]) -> list[_Item]:
        for item in items:
            item.queued = False
            if item.expiry is not None:
                item.expiry.cancel()
                item.expiry = None
        self._waiting -= len(items)
        key = items[0].key
        if not self._queues[key]:
            del self._queues[key]
        return items

    def _on_timer(self, due: float) -> None:
        self._timer = None
        self._flushed_through = max(self._flushed_through, due)
        self._pump()

    async def _run(self, items: list[_Item]) -> None:
        try:
            await self._run_batch(items)
        finally:
            self._running -= 1
            self._pump()

    async def _run_batch(self, items: list[_Item]) -> None:
        start = time.perf_counter_ns()
        total = sum(item.rows for item in items)
        for item in items:
            self._queue_hist.observe((start - item.arrived_ns) / 1e9)
        names = items[0].key[1] or None
        try:
            if len(items) == 1:
                feeds = items[0].inputs
            else:
                feeds = {n: np.concatenate([i.inputs[n] for i in items]) for n in items[0].inputs}
            t1 = time.perf_counter_ns()
            outputs = await self._session.run(feeds, names)
            t2 = time.perf_counter_ns()
            parts = self._split(outputs, [item.rows for item in items], total)
            t3 = time.perf_counter_ns()
        except asyncio.CancelledError:
            for item in items:
                _fail(item, UnavailableError(f"{self._label} stopped while running"))
            raise
        except Exception as exc:
            for item in items:
                _fail(item, exc)
            return
        self._stats.record_execution(
            rows=total, input_ns=t1 - start, infer_ns=t2 - t1, output_ns=t3 - t2
        )
        self._batch_hist.observe(total)
        for item, part in zip(items, parts, strict=True):
            result = Result(
                outputs=part,
                rows=item.rows,
                batch_rows=total,
                queue_ns=start - item.arrived_ns,
                input_ns=t1 - start,
                infer_ns=t2 - t1,
                output_ns=t3 - t2,
            )
            _answer(item, result)

    def _split(
        self, outputs: dict[str, np.ndarray], rows: list[int], total: int
    ) -> list[dict[str, np.ndarray]]:
        if len(rows) == 1:
            return [outputs]
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != total:
                raise ModelServeError(
                    f"{self._label} output {name!r} has shape {list(value.shape)} for a batch "
                    f"of {total} rows, so it cannot be split per request"
                )
        bounds = np.cumsum([0, *rows]).tolist()
        # Slices are views of the batch's arrays: no copy until the reply is encoded.
        return [
            {name: value[lo:hi] for name, value in outputs.items()}
            for lo, hi in itertools.pairwise(bounds)
        ]


async def run_unbatched(
    session: ModelSession,
    stats: VersionStats,
    inputs: Mapping[str, np.ndarray],
    output_names: Sequence[str] | None,
) -> Result:
    """One request as one model run: models without a batch dimension (max_batch_size 0)."""
    start = time.perf_counter_ns()
    outputs = await session.run(inputs, output_names)
    done = time.perf_counter_ns()
    stats.record_execution(rows=1, input_ns=0, infer_ns=done - start, output_ns=0)
    return Result(
        outputs=outputs,
        rows=1,
        batch_rows=1,
        queue_ns=0,
        input_ns=0,
        infer_ns=done - start,
        output_ns=0,
    )


def _answer(item: _Item, result: Result) -> None:
    if not item.future.done():  # done: the caller was cancelled meanwhile
        item.future.set_result(result)


def _fail(item: _Item, exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc)
