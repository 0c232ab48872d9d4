"""The production online store: one Redis string per (view, entity), holding its encoded row.

A lookup of N entities is ONE ``MGET`` (one command, one round trip). A write batch is ONE
``EVALSHA`` of a small Lua script that, atomically (Redis runs a script as a unit), reads the
stored rows, drops every incoming row older than the stored one, and writes the rest with
``MSET``. Keys get no expiry tied to the TTL: EXPIRED is decided at read time from the event
time, so Redis must never drop a value before its expiry can be reported. An optional key
expiry far beyond the TTL keeps memory bounded. Run Redis with ``maxmemory-policy
noeviction`` (or ``volatile-*`` with expiry off) so values are not evicted early.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from featurestore.online_store import StoredRow
from featurestore.rows import EVENT_OFFSET, FORMAT_VERSION
from modelserve.errors import UnavailableError
from modelserve.redis_support import CircuitBreaker, RedisClientConfig, make_client

log = logging.getLogger(__name__)

# Lua's unpack() tops out near 8000 values, so big batches are read and written in chunks;
# the script as a whole stays atomic. 3000 keys: a 1,000-row batch is one MGET + one MSET.
_CHUNK = 3000

_WRITE_SCRIPT = f"""
-- KEYS: row keys. ARGV[1]: key expiry in ms (0 = none). ARGV[i + 1]: the row for KEYS[i].
-- A row's event time is an int64 LE at byte offset {EVENT_OFFSET} (rows.py); newest wins.
local expiry = tonumber(ARGV[1])
local chunk = {_CHUNK}
local out = {{}}
for first = 1, #KEYS, chunk do
  local last = math.min(first + chunk - 1, #KEYS)
  local old = redis.call('MGET', unpack(KEYS, first, last))
  for i = first, last do
    local new = ARGV[i + 1]
    local prev = old[i - first + 1]
    if prev and (#prev < {EVENT_OFFSET + 8} or string.byte(prev, 1) ~= {FORMAT_VERSION}) then
      return redis.error_reply('ERR stored value at ' .. KEYS[i] .. ' is not a feature row')
    end
    if (not prev) or struct.unpack('<i8', prev, {EVENT_OFFSET + 1})
        <= struct.unpack('<i8', new, {EVENT_OFFSET + 1}) then
      out[#out + 1] = KEYS[i]
      out[#out + 1] = new
    end
  end
end
for first = 1, #out, 2 * chunk do
  redis.call('MSET', unpack(out, first, math.min(first + 2 * chunk - 1, #out)))
end
if expiry > 0 then
  for i = 1, #out, 2 do redis.call('PEXPIRE', out[i], expiry) end
end
return #out / 2
"""


class RedisOnlineStore:
    """Online rows in Redis under ``key_prefix`` (key = prefix + view + ":" + entity key).

    ``key_expiry_factor`` > 0 expires a key ``max(factor x ttl, key_expiry_min_s)`` after its
    last write (views with a ttl only); 0 keeps keys forever.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "modelserve:fs:",
        client_config: RedisClientConfig | None = None,
        key_expiry_factor: int = 10,
        key_expiry_min_s: int = 86_400,
    ) -> None:
        config = client_config or RedisClientConfig()
        self._client = make_client(url, config)
        self._prefix = key_prefix
        self._expiry_factor = key_expiry_factor
        self._expiry_min_s = key_expiry_min_s
        self._write_script = self._client.register_script(_WRITE_SCRIPT)
        self._breaker = CircuitBreaker(
            what="online feature store (Redis)",
            failures=config.breaker_failures,
            open_s=config.breaker_open_s,
        )

    async def close(self) -> None:
        await self._client.aclose()

    def key(self, view: str, entity: str) -> str:
        """The Redis key of one entity's row (view names cannot contain ':')."""
        return f"{self._prefix}{view}:{entity}"

    def _expiry_ms(self, ttl_seconds: int) -> int:
        if ttl_seconds <= 0 or self._expiry_factor <= 0:
            return 0
        return max(ttl_seconds * self._expiry_factor, self._expiry_min_s) * 1000

    async def write_rows(self, view: str, rows: Sequence[StoredRow], *, ttl_seconds: int) -> int:
        if not rows:
            return 0
        keys = [self.key(view, row.entity) for row in rows]
        args: list[Any] = [self._expiry_ms(ttl_seconds), *(row.blob for row in rows)]
        stored = await self._guarded(lambda: self._write_script(keys=keys, args=args))
        return int(stored)

    async def read_rows(self, view: str, entities: Sequence[str]) -> list[bytes | None]:
        if not entities:
            return []
        keys = [self.key(view, entity) for entity in entities]
        values: list[bytes | None] = await self._guarded(lambda: self._client.mget(keys))
        return values

    async def delete_view(self, view: str) -> int:
        """SCAN the view's keys and UNLINK them a page at a time (never one blocking KEYS)."""
        pattern = self.key(view, "*")
        deleted = 0

        cursor = 0
        while True:
            cursor, keys = await self._guarded(
                functools.partial(self._client.scan, cursor, match=pattern, count=_CHUNK)
            )
            if keys:
                deleted += int(await self._guarded(functools.partial(self._client.unlink, *keys)))
            if cursor == 0:
                return deleted

    async def _guarded(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run a Redis call behind the breaker; outages become UNAVAILABLE (retryable)."""
        self._breaker.check()
        try:
            result = await call()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self._breaker.failure()
            # The address stays in the log; the caller gets a code and a short message.
            log.warning("redis online store call failed: %r", exc)
            raise UnavailableError(
                "online feature store (Redis) did not answer in time; retry"
            ) from exc
        self._breaker.success()
        return result
