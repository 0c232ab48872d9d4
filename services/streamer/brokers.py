"""The one interface the pipeline sees, whatever the broker: a ``Source`` hands out deliveries
and takes acks; a ``Sink`` writes records exactly once per idempotency key.

Adapters: ``redis_streams`` (consumer groups, XAUTOCLAIM) and ``jetstream`` (durable pull
consumers, ack-wait redelivery). A Kafka adapter would fit the same interface; none is written
because no Kafka broker can be run in this project's tests (docs/streaming.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from streamer.urls import BrokerURL, parse


class BrokerError(Exception):
    """The broker could not be reached or refused a command; the caller retries later."""


@dataclass
class Delivery:
    """One message as the source handed it over."""

    message_id: str  # broker id: Redis entry id, JetStream stream sequence
    data: bytes | None  # the entry's ``data`` field / the message body; None if absent
    deliveries: int  # times the broker delivered it, this time included
    timestamp_ms: float  # when the broker took it (event_time when the event has none)
    handle: Any = field(default=None, repr=False)  # adapter-private (a NATS Msg)


@dataclass(frozen=True)
class Lag:
    pending: int  # delivered to the group, not acked yet
    undelivered: int  # in the stream, not yet delivered to the group

    @property
    def total(self) -> int:
        return self.pending + self.undelivered


@dataclass(frozen=True)
class Record:
    """One write to a sink: ``data`` under an idempotency key (the event id)."""

    key: str
    data: bytes


class Source(Protocol):
    async def start(self) -> None:
        """Connect; create the group / durable consumer if missing."""

    async def read(self, count: int, wait_s: float) -> list[Delivery]:
        """Up to ``count`` new deliveries, waiting at most ``wait_s`` for the first one."""

    async def reclaim(self, count: int) -> list[Delivery]:
        """Deliveries of consumers that died (pending longer than the idle time), now ours."""

    async def ack(self, deliveries: Sequence[Delivery]) -> None: ...

    async def lag(self) -> Lag | None: ...

    async def leave(self) -> None:
        """Leave the group cleanly (nothing of ours left pending is dropped)."""

    async def close(self) -> None: ...


class Sink(Protocol):
    async def start(self) -> None: ...

    async def write(self, records: Sequence[Record]) -> list[bool]:
        """Write each record unless its key was written within the dedupe window; returns,
        per record, True if written now, False if it was a duplicate."""

    async def close(self) -> None: ...


def open_source(url: str, *, group: str, consumer: str, reclaim_idle_ms: int) -> Source:
    broker = parse(url, "source")
    if broker.is_redis:
        from streamer.redis_streams import RedisStreamSource

        return RedisStreamSource(broker, group=group, consumer=consumer, idle_ms=reclaim_idle_ms)
    from streamer.jetstream import JetStreamSource

    return JetStreamSource(broker, durable=group, ack_wait_ms=reclaim_idle_ms)


def open_sink(url: str, *, dedupe_ttl_s: int, maxlen: int, what: str = "sink") -> Sink:
    broker: BrokerURL = parse(url, what)
    if broker.is_redis:
        from streamer.redis_streams import RedisStreamSink

        return RedisStreamSink(broker, dedupe_ttl_s=dedupe_ttl_s, maxlen=broker.maxlen or maxlen)
    from streamer.jetstream import JetStreamSink

    return JetStreamSink(broker, dedupe_window_s=dedupe_ttl_s)
