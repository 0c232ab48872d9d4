"""Where the prediction cache keeps answers: this process (LRU) or Redis, shared by routers.

Both hold serialized ModelInferResponse bytes under a key that already names the model,
version and artifact. A backend failure raises ``CacheError`` with a short reason for the
metrics; the caller then serves without the cache. Redis follows RELIABILITY.md's Redis
client row: 100 ms connect, 50 ms socket timeouts, two retries with exponential backoff, and
a circuit breaker (5 consecutive failures -> 1 s of bypass without touching the network).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from modelserve.redis_support import CircuitBreaker, RedisClientConfig, make_client

log = logging.getLogger(__name__)


class CacheError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # a metrics label: timeout, connection, circuit_open, error


class CacheBackend(Protocol):
    name: str

    async def get(self, key: str, budget_s: float) -> bytes | None: ...
    async def put(self, key: str, value: bytes, ttl_s: int, budget_s: float) -> None: ...
    async def close(self) -> None: ...


class LocalBackend:
    """Least recently used out first, bounded by entries and by bytes held."""

    name = "local"

    def __init__(
        self, *, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self._bytes = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str, budget_s: float) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return found[1]

    async def put(self, key: str, value: bytes, ttl_s: int, budget_s: float) -> None:
        if len(value) > self._max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + ttl_s, value)
        self._bytes += len(value)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self._bytes -= len(value)

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0


class RedisBackend:
    """One Redis string per answer under ``key_prefix``, expiring with the version's TTL."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "modelserve:pc:",
        config: RedisClientConfig | None = None,
    ) -> None:
        config = config or RedisClientConfig()
        self._client = make_client(url, config)
        self._prefix = key_prefix
        self.breaker = CircuitBreaker(
            what="prediction cache (Redis)",
            failures=config.breaker_failures,
            open_s=config.breaker_open_s,
        )

    async def get(self, key: str, budget_s: float) -> bytes | None:
        value: bytes | None = await self._guarded(
            lambda: self._client.get(self._prefix + key), budget_s
        )
        return value

    async def put(self, key: str, value: bytes, ttl_s: int, budget_s: float) -> None:
        await self._guarded(
            lambda: self._client.set(self._prefix + key, value, px=ttl_s * 1000), budget_s
        )

    async def _guarded(self, call: Callable[[], Awaitable[Any]], budget_s: float) -> Any:
        if self.breaker.open:
            raise CacheError("circuit_open")
        if budget_s <= 0:
            raise CacheError("timeout")
        try:
            async with asyncio.timeout(budget_s):
                result = await call()
        except (TimeoutError, RedisTimeoutError) as exc:
            self._failed(exc)
            raise CacheError("timeout") from None
        except RedisConnectionError as exc:
            self._failed(exc)
            raise CacheError("connection") from None
        except RedisError as exc:  # e.g. a READONLY replica or OOM: not an outage, no breaker
            log.warning("prediction cache (Redis) call failed: %r", exc)
            raise CacheError("error") from None
        self.breaker.success()
        return result

    def _failed(self, exc: BaseException) -> None:
        self.breaker.failure()
        # The address stays in the log; callers never see it (RELIABILITY.md rule 10).
        log.warning("prediction cache (Redis) unavailable: %r", exc)

    async def close(self) -> None:
        await self._client.aclose()
