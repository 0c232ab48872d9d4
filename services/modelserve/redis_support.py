"""Redis clients and a circuit breaker, the same everywhere Redis is used (the feature
store's online store, the routers' shared prediction cache).

RELIABILITY.md's Redis row: connect timeout 0.1 s, socket timeout 0.05 s, two retries with
capped exponential backoff on connection errors and timeouts only, health check every 10 s,
and a breaker that fails fast for 1 s after 5 consecutive failures, so a dead Redis costs
callers microseconds instead of a connect timeout plus retries each.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from modelserve.errors import UnavailableError


@dataclass(frozen=True)
class RedisClientConfig:
    socket_connect_timeout_s: float = 0.1
    socket_timeout_s: float = 0.05
    retries: int = 2  # on connection errors and timeouts only
    backoff_base_s: float = 0.01
    backoff_cap_s: float = 0.5
    health_check_interval_s: int = 10
    breaker_failures: int = 5
    breaker_open_s: float = 1.0


def make_client(url: str, config: RedisClientConfig) -> aioredis.Redis:
    """A redis.asyncio client from a ``redis://`` / ``rediss://`` URL (AUTH/TLS in the URL)."""
    return aioredis.from_url(
        url,
        socket_connect_timeout=config.socket_connect_timeout_s,
        socket_timeout=config.socket_timeout_s,
        retry=Retry(
            ExponentialBackoff(cap=config.backoff_cap_s, base=config.backoff_base_s),
            config.retries,
            supported_errors=(RedisConnectionError, RedisTimeoutError),
        ),
        health_check_interval=config.health_check_interval_s,
    )


class CircuitBreaker:
    """After ``failures`` in a row, refuse for ``open_s``; then calls go through again
    (half-open: one more failure re-opens it, one success closes it)."""

    def __init__(
        self,
        *,
        what: str = "Redis",
        failures: int = 5,
        open_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._what = what
        self._threshold = failures
        self._open_s = open_s
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0

    @property
    def open(self) -> bool:
        return self._failures >= self._threshold and self._clock() < self._open_until

    def check(self) -> None:
        """Raise UNAVAILABLE while open."""
        if self.open:
            raise UnavailableError(
                f"{self._what} is unavailable ({self._failures} consecutive failures); "
                f"retry in {self._open_s:g} s"
            )

    def success(self) -> None:
        self._failures = 0

    def failure(self) -> None:
        self._failures += 1
        if self._failures >= self._threshold:
            self._open_until = self._clock() + self._open_s
