"""A small circuit breaker: after N consecutive failures, fail fast for a while.

RELIABILITY.md (Redis client row): break after 5 consecutive failures for 1 s, so a dead
Redis costs callers microseconds instead of a connect timeout plus retries each.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from modelserve.errors import UnavailableError


class CircuitBreaker:
    def __init__(
        self,
        *,
        what: str,
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

    def check(self) -> None:
        """Raise UNAVAILABLE while open; after ``open_s`` calls go through again (half-open:
        one more failure re-opens it, one success closes it)."""
        if self._failures >= self._threshold and self._clock() < self._open_until:
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
