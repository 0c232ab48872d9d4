"""The consumer loop: read a micro-batch, score every event through the gateway, write one
result per event (or a dead letter), and only then ack the batch at the source.

At-least-once in: nothing is acked before its result (or dead letter) is written, so a crash
anywhere leaves the batch pending for redelivery (NATS ack wait) or a claim (Redis
XAUTOCLAIM). One result per event out: the sink remembers each event id for the dedupe window
and drops a second write. Backpressure: at most ``max_in_flight`` batches are unfinished, and
a batch is finished only once the sink took its results, so a slow gateway or a slow sink
stops the reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from modelserve.proto.inference import grpc_service_pb2 as pb
from streamer import stream_metrics as m
from streamer.brokers import BrokerError, Delivery, Record, Sink, Source
from streamer.events import Event, EventError, dead_letter_json, decode_event, result_json
from streamer.scorer import GatewayScorer, ScoreFailure

log = logging.getLogger(__name__)
IDLE_POLL_S = 1.0  # longest blocking read: how fast a stop is noticed on an idle stream


@dataclass(frozen=True)
class PipelineConfig:
    group: str
    consumer: str
    max_batch: int = 32
    max_wait_s: float = 0.005
    max_in_flight: int = 4
    max_attempts: int = 3
    batch_timeout_s: float = 10.0
    reclaim_every_s: float = 1.0
    lag_every_s: float = 1.0


@dataclass
class Outcome:
    """What one batch produced: records for the sink and the dead-letter stream."""

    results: list[tuple[Record, Event]] = field(default_factory=list)
    dead: list[tuple[Record, str]] = field(default_factory=list)


async def _retry_forever(
    what: str, call: Callable[[], Awaitable[None]], stop: asyncio.Event
) -> None:
    delay = 0.1
    while not stop.is_set():
        try:
            await call()
            return
        except (BrokerError, ScoreFailure, grpc.RpcError) as exc:
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)


class Pipeline:
    def __init__(
        self,
        *,
        source: Source,
        sink: Sink,
        dead_letter: Sink,
        scorer: GatewayScorer,
        config: PipelineConfig,
    ) -> None:
        self._source = source
        self._sink = sink
        self._dead_letter = dead_letter
        self._scorer = scorer
        self._config = config
        self._labels = {"group": config.group, "consumer": config.consumer}
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight_ids: set[str] = set()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._next_reclaim = 0.0
        self.ready = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect to the brokers and learn the model's inputs; retried until they answer."""
        stop = self._stopping
        await _retry_forever("source start", self._source.start, stop)
        await _retry_forever("sink start", self._sink.start, stop)
        await _retry_forever("dead-letter start", self._dead_letter.start, stop)

        async def signature() -> None:
            await self._scorer.signature()

        await _retry_forever(f"metadata of {self._scorer.model}", signature, stop)
        if not stop.is_set():
            self.ready.set()

    async def run(self) -> None:
        try:
            await self.start()
            while not self._stopping.is_set():
                await self._slots.acquire()
                batch = await self._next_batch() if not self._stopping.is_set() else []
                if not batch:
                    self._slots.release()
                    continue
                task = asyncio.create_task(self._process(batch), name="stream batch")
                self._tasks.add(task)
                task.add_done_callback(self._finished)
        finally:
            self._stopped.set()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("batch failed", exc_info=task.exception())

    async def drain(self) -> None:
        """SIGTERM: stop reading, let in-flight batches finish and ack, leave the group."""
        self._stopping.set()
        await self._stopped.wait()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        with contextlib.suppress(BrokerError):
            await self._source.leave()
        log.info("drained: no batch in flight")

    async def close(self) -> None:
        for closer in (self._source.close, self._sink.close, self._dead_letter.close):
            with contextlib.suppress(Exception):
                await closer()

    async def watch_lag(self) -> None:
        """Export consumer lag (pending + not yet delivered) every ``lag_every_s``."""
        while True:
            await asyncio.sleep(self._config.lag_every_s)
            if not self.ready.is_set():
                continue
            try:
                lag = await self._source.lag()
            except BrokerError:
                m.BROKER_ERRORS.labels(**self._labels, op="lag").inc()
                continue
            if lag is not None:
                m.LAG.labels(**self._labels).set(lag.total)
                m.PENDING.labels(**self._labels).set(lag.pending)

    # --- reading -----------------------------------------------------------------------------
    async def _next_batch(self) -> list[Delivery]:
        try:
            return await self._collect()
        except BrokerError as exc:
            m.BROKER_ERRORS.labels(**self._labels, op="read").inc()
            log.warning("reading the source failed (%s); retrying", exc)
            await asyncio.sleep(0.2 + 0.3 * random.random())
            return []

    async def _collect(self) -> list[Delivery]:
        """Reclaimed entries first, then new ones: up to max_batch, and once the first one is
        in, at most max_wait more for the rest."""
        c = self._config
        batch: list[Delivery] = []
        now = time.monotonic()
        if now >= self._next_reclaim:
            self._next_reclaim = now + c.reclaim_every_s
            claimed = await self._source.reclaim(c.max_batch)
            claimed = [d for d in claimed if d.message_id not in self._in_flight_ids]
            m.RECLAIMED.labels(**self._labels).inc(len(claimed))
            batch += claimed
        if len(batch) < c.max_batch:
            batch += await self._source.read(c.max_batch - len(batch), 0 if batch else IDLE_POLL_S)
        end = time.monotonic() + c.max_wait_s
        while 0 < len(batch) < c.max_batch and not self._stopping.is_set():
            left = end - time.monotonic()
            if left <= 0:
                break
            more = await self._source.read(c.max_batch - len(batch), left)
            if not more:
                break
            batch += more
        self._in_flight_ids.update(d.message_id for d in batch)
        return batch

    # --- one batch ---------------------------------------------------------------------------
    async def _process(self, batch: Sequence[Delivery]) -> None:
        c = self._config
        m.IN_FLIGHT.labels(**self._labels).inc()
        m.EVENTS_IN.labels(**self._labels).inc(len(batch))
        m.BATCH_SIZE.labels(**self._labels).observe(len(batch))
        deadline = time.monotonic() + c.batch_timeout_s
        try:
            # The sink's and the ack's time count against the batch too (plus a margin for the
            # writes themselves); past it the batch stays unacked and comes back.
            async with asyncio.timeout(c.batch_timeout_s + 5.0):
                outcome = await self._score(batch, deadline)
                await self._write(outcome)
                await self._source.ack(batch)
        except (BrokerError, TimeoutError) as exc:
            m.BROKER_ERRORS.labels(**self._labels, op="write").inc()
            log.warning("batch of %d left unacked for redelivery: %s", len(batch), exc)
        except (ScoreFailure, grpc.RpcError) as exc:  # no signature: the gateway is down
            log.warning("batch of %d left unacked: %s", len(batch), exc)
            self._scorer.forget_signature()
        finally:
            self._in_flight_ids.difference_update(d.message_id for d in batch)
            m.IN_FLIGHT.labels(**self._labels).dec()

    async def _score(self, batch: Sequence[Delivery], deadline: float) -> Outcome:
        c = self._config
        outcome = Outcome()
        signature = await self._scorer.signature()
        events: list[Event] = []
        for d in batch:
            if d.deliveries > c.max_attempts:
                # Delivered this often without a result: it keeps killing its consumer.
                self._dead(
                    outcome,
                    d,
                    None,
                    "REDELIVERED",
                    f"delivered {d.deliveries} times without a result",
                    d.deliveries,
                )
                continue
            try:
                events.append(decode_event(d, self._scorer.model, signature))
            except EventError as exc:
                self._dead(outcome, d, exc.event_id, exc.code.name, exc.message, 0)
        replies = await asyncio.gather(
            *(self._scorer.score(e.request, deadline) for e in events), return_exceptions=True
        )
        scored_at = time.time() * 1000
        for event, reply in zip(events, replies, strict=True):
            if isinstance(reply, ScoreFailure):
                self._dead(
                    outcome,
                    event.delivery,
                    event.id,
                    reply.code.name,
                    reply.message,
                    reply.attempts,
                )
            elif isinstance(reply, pb.ModelInferResponse):
                try:
                    data = result_json(event, reply, scored_at)
                except Exception as exc:  # an answer we cannot encode is the event's failure
                    self._dead(outcome, event.delivery, event.id, "INTERNAL", str(exc), 1)
                    continue
                outcome.results.append((Record(event.id, data), event))
            else:
                raise reply  # a bug: the batch stays unacked and the error is logged
        return outcome

    def _dead(
        self, outcome: Outcome, d: Delivery, event_id: str | None, code: str, error: str,
        attempts: int,
    ) -> None:  # fmt: skip
        key = "dlq:" + (event_id or f"msg-{d.message_id}")
        outcome.dead.append(
            (Record(key, dead_letter_json(d, event_id, code, error, attempts)), code)
        )

    async def _write(self, outcome: Outcome) -> None:
        if outcome.results:
            written = await self._sink.write([r for r, _ in outcome.results])
            now = time.time() * 1000
            for (_, event), new in zip(outcome.results, written, strict=True):
                if new:
                    m.EVENTS_OUT.labels(**self._labels).inc()
                    m.E2E_LATENCY.labels(**self._labels).observe(
                        max(now - event.event_time_ms, 0) / 1000
                    )
                else:
                    m.DUPLICATES.labels(**self._labels).inc()
        if outcome.dead:
            written = await self._dead_letter.write([r for r, _ in outcome.dead])
            for (_, reason), new in zip(outcome.dead, written, strict=True):
                if new:
                    m.EVENTS_FAILED.labels(**self._labels, reason=reason).inc()
