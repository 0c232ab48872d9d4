"""Redis Streams adapter: a consumer group read with XREADGROUP, acked with XACK only after
the result is written, pending entries of a dead consumer claimed with XAUTOCLAIM; sinks are
streams with an approximate MAXLEN, written by a script that remembers each idempotency key.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.exceptions import RedisError, ResponseError

from modelserve.redis_support import RedisClientConfig, make_client
from streamer.brokers import BrokerError, Delivery, Lag, Record
from streamer.urls import BrokerURL

log = logging.getLogger(__name__)
T = TypeVar("T")

# Longer than the longest BLOCK we issue (1 s): a blocking read must not time out the socket.
CLIENT_CONFIG = RedisClientConfig(socket_connect_timeout_s=1.0, socket_timeout_s=5.0)
MAX_BLOCK_MS = 1000

# One atomic step per result: remember the key (NX, with the dedupe TTL) and append the entry,
# or do nothing when the key is known, so a redelivered event never adds a second result.
WRITE_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'data', ARGV[3])
  return 1
end
return 0
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _guard(what: str, call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except (RedisError, OSError) as exc:
        raise BrokerError(f"redis {what} failed: {type(exc).__name__}: {exc}") from exc


def _delivery(entry_id: Any, fields: Any, deliveries: int) -> Delivery:
    mid = _text(entry_id)
    data = fields.get(b"data") if isinstance(fields, dict) else None
    return Delivery(mid, data, deliveries, float(mid.partition("-")[0]))


class RedisStreamSource:
    def __init__(self, url: BrokerURL, *, group: str, consumer: str, idle_ms: int) -> None:
        self._url = url
        self._stream = url.stream
        self._group = group
        self._consumer = consumer
        self._idle_ms = idle_ms
        self._client = make_client(url.server, CLIENT_CONFIG)
        self._cursor = "0-0"

    async def start(self) -> None:
        await self._ensure_group()

    async def _ensure_group(self) -> None:
        try:
            # From the stream's start: events written before the first consumer are scored too.
            await self._client.xgroup_create(self._stream, self._group, id="0", mkstream=True)
            log.info("created group %s on %s", self._group, self._url.describe())
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise BrokerError(f"redis XGROUP CREATE failed: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise BrokerError(f"redis XGROUP CREATE failed: {exc}") from exc

    async def _nogroup_safe(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await _guard(what, call)
        except BrokerError as exc:
            # A Redis that lost its data (restarted without persistence) lost the group too.
            if "NOGROUP" in str(exc):
                await self._ensure_group()
            raise

    async def read(self, count: int, wait_s: float) -> list[Delivery]:
        block = max(1, min(int(wait_s * 1000), MAX_BLOCK_MS))
        reply: Any = await self._nogroup_safe(
            "XREADGROUP",
            lambda: self._client.xreadgroup(
                self._group, self._consumer, {self._stream: ">"}, count=count, block=block
            ),
        )
        out: list[Delivery] = []
        for _stream, entries in reply or ():
            out += [_delivery(eid, fields, 1) for eid, fields in entries]
        return out

    async def reclaim(self, count: int) -> list[Delivery]:
        reply = await self._nogroup_safe(
            "XAUTOCLAIM",
            lambda: self._client.xautoclaim(
                self._stream,
                self._group,
                self._consumer,
                min_idle_time=self._idle_ms,
                start_id=self._cursor,
                count=count,
            ),
        )
        self._cursor = _text(reply[0])
        entries = [(eid, f) for eid, f in reply[1] if f is not None]
        if not entries:
            return []
        # XAUTOCLAIM does not say how often an entry was delivered; XPENDING does.
        ids = [_text(eid) for eid, _ in entries]
        pending = await _guard(
            "XPENDING",
            lambda: self._client.xpending_range(
                self._stream, self._group, min=ids[0], max=ids[-1], count=len(ids) * 4 + 16
            ),
        )
        times = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        return [_delivery(eid, f, times.get(_text(eid), 2)) for eid, f in entries]

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            ids = [d.message_id for d in deliveries]
            await _guard("XACK", lambda: self._client.xack(self._stream, self._group, *ids))

    async def lag(self) -> Lag | None:
        groups = await _guard("XINFO GROUPS", lambda: self._client.xinfo_groups(self._stream))
        for g in groups:
            if _text(g.get("name")) == self._group:
                undelivered = g.get("lag")
                if undelivered is None:  # Redis cannot tell after some deletions
                    length = await _guard("XLEN", lambda: self._client.xlen(self._stream))
                    undelivered = max(int(length) - int(g.get("entries-read") or 0), 0)
                return Lag(pending=int(g.get("pending", 0)), undelivered=int(undelivered))
        return None

    async def leave(self) -> None:
        """Delete this consumer from the group, unless entries are still pending on it:
        XGROUP DELCONSUMER would drop those from the group, and nobody could claim them."""
        summary = await _guard("XPENDING", lambda: self._client.xpending(self._stream, self._group))
        mine = [c for c in summary.get("consumers") or () if _text(c.get("name")) == self._consumer]
        if mine and int(mine[0].get("pending", 0)) > 0:
            log.warning(
                "leaving %s with %s pending entries for other consumers to claim",
                self._group,
                mine[0].get("pending"),
            )
            return
        await _guard(
            "XGROUP DELCONSUMER",
            lambda: self._client.xgroup_delconsumer(self._stream, self._group, self._consumer),
        )
        log.info("left group %s as %s", self._group, self._consumer)

    async def close(self) -> None:
        await self._client.aclose()


class RedisStreamSink:
    def __init__(self, url: BrokerURL, *, dedupe_ttl_s: int, maxlen: int) -> None:
        self._url = url
        self._stream = url.stream
        self._ttl = dedupe_ttl_s
        self._maxlen = maxlen
        self._client = make_client(url.server, CLIENT_CONFIG)
        self._script = self._client.register_script(WRITE_ONCE)

    def dedupe_key(self, key: str) -> str:
        # The hash tag keeps the key in the stream's slot, so the script works on a cluster.
        return f"{{{self._stream}}}:dedupe:{key}"

    async def start(self) -> None:
        await _guard("PING", self._client.ping)

    async def write(self, records: Sequence[Record]) -> list[bool]:
        if not records:
            return []

        async def run() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for r in records:
                    await self._script(
                        keys=[self.dedupe_key(r.key), self._stream],
                        args=[self._ttl, self._maxlen, r.data],
                        client=pipe,
                    )
                result: list[Any] = await pipe.execute()
                return result

        replies = await _guard("write", run)
        return [int(r) == 1 for r in replies]

    async def close(self) -> None:
        await self._client.aclose()
