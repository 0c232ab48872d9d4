"""NATS JetStream adapter: one durable pull consumer per group (every process of the group
pulls from it, so adding processes scales out), explicit acks sent after the sink write, and
redelivery by the server once the ack wait passes. Sinks publish with ``Nats-Msg-Id`` = the
event id, so the stream's duplicate window drops a second result for a redelivered event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from streamer.brokers import BrokerError, Delivery, Lag, Record
from streamer.urls import BrokerURL

log = logging.getLogger(__name__)
T = TypeVar("T")
REQUEST_TIMEOUT_S = 2
FAILURES = (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError, OSError)


async def _guard(what: str, call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except FAILURES as exc:
        raise BrokerError(f"nats {what} failed: {type(exc).__name__}: {exc}") from exc


async def _connect(url: BrokerURL) -> Client:
    async def disconnected() -> None:
        log.warning("disconnected from %s; reconnecting", url.describe())

    async def reconnected() -> None:
        log.info("reconnected to %s", url.describe())

    async def error(exc: Exception) -> None:
        log.debug("nats: %s", exc)

    return await _guard(
        "connect",
        lambda: nats.connect(
            servers=[url.server],
            connect_timeout=2,
            reconnect_time_wait=0.2,
            max_reconnect_attempts=-1,  # a broker restart is ridden out, however long
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        ),
    )


async def ensure_stream(js: JetStreamContext, url: BrokerURL, duplicate_window_s: float) -> None:
    """Create the stream on first use (as Redis XADD/MKSTREAM does); keep an existing one."""
    try:
        await js.stream_info(url.stream)
        return
    except nats.js.errors.NotFoundError:
        pass
    config = StreamConfig(
        name=url.stream, subjects=[url.subject], duplicate_window=duplicate_window_s
    )
    try:
        await js.add_stream(config)
        log.info("created JetStream stream %s (%s)", url.stream, url.subject)
    except nats.js.errors.BadRequestError:  # created meanwhile by another consumer
        await js.stream_info(url.stream)


class JetStreamSource:
    def __init__(self, url: BrokerURL, *, durable: str, ack_wait_ms: int) -> None:
        self._url = url
        self._durable = durable
        self._ack_wait_s = ack_wait_ms / 1000
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._sub: JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        self._nc = await _connect(self._url)
        self._js = self._nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        js = self._js
        await _guard("stream info", lambda: ensure_stream(js, self._url, 120.0))
        config = ConsumerConfig(
            durable_name=self._durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait_s,
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=-1,  # poison events are dead-lettered by the streamer, not dropped
            filter_subject=self._url.subject,
        )
        self._sub = await _guard(
            "pull subscribe",
            lambda: js.pull_subscribe(
                self._url.subject, durable=self._durable, stream=self._url.stream, config=config
            ),
        )

    async def read(self, count: int, wait_s: float) -> list[Delivery]:
        assert self._sub is not None, "start() first"
        sub = self._sub
        try:
            msgs = await sub.fetch(batch=count, timeout=max(wait_s, 0.01))
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except FAILURES as exc:
            raise BrokerError(f"nats fetch failed: {type(exc).__name__}: {exc}") from exc
        out = []
        for msg in msgs:
            meta = msg.metadata
            stamp = meta.timestamp.timestamp() * 1000 if meta.timestamp else 0.0
            out.append(
                Delivery(str(meta.sequence.stream), msg.data, meta.num_delivered, stamp, msg)
            )
        return out

    async def reclaim(self, count: int) -> list[Delivery]:
        return []  # the server redelivers unacked messages after ack_wait by itself

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        assert self._nc is not None
        nc = self._nc
        for d in deliveries:
            await _guard("ack", d.handle.ack)
        await _guard("flush", lambda: nc.flush(timeout=REQUEST_TIMEOUT_S))

    async def lag(self) -> Lag | None:
        assert self._js is not None
        js = self._js
        info = await _guard(
            "consumer info", lambda: js.consumer_info(self._url.stream, self._durable)
        )
        return Lag(pending=int(info.num_ack_pending or 0), undelivered=int(info.num_pending or 0))

    async def leave(self) -> None:
        """Stop pulling; the durable consumer stays for the rest of the group (and a restart)."""
        if self._sub is not None:
            await _guard("unsubscribe", self._sub.unsubscribe)
            self._sub = None

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain() if self._nc.is_connected else await self._nc.close()


class JetStreamSink:
    def __init__(self, url: BrokerURL, *, dedupe_window_s: int) -> None:
        self._url = url
        self._window = float(dedupe_window_s)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None

    async def start(self) -> None:
        self._nc = await _connect(self._url)
        self._js = self._nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        js = self._js
        await _guard("stream info", lambda: ensure_stream(js, self._url, self._window))

    async def write(self, records: Sequence[Record]) -> list[bool]:
        assert self._js is not None
        js = self._js

        async def one(r: Record) -> bool:
            ack: Any = await js.publish(
                self._url.subject,
                r.data,
                stream=self._url.stream,
                headers={"Nats-Msg-Id": r.key},
            )
            return not ack.duplicate

        return await _guard("publish", lambda: asyncio.gather(*(one(r) for r in records)))

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
