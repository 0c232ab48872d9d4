"""Per-identity limits: open streams, a token-bucket rate and concurrent unary calls.

Streams (watches, status streams, ModelStreamInfer) are counted per identity on every
service, so one identity opening hundreds of watches takes at most its share of the
registry's watchers and services still sync. The unary rate and concurrency limits are meant
for the gateway; identities with the ``service`` role are not rate limited there (they carry
everyone's traffic). Over a limit: RESOURCE_EXHAUSTED with ``grpc-retry-pushback-ms``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_TRACKED = 10_000  # identities with a bucket; beyond that, full buckets are forgotten


class LimitExceeded(Exception):
    def __init__(self, message: str, pushback_ms: int) -> None:
        super().__init__(message)
        self.message = message
        self.pushback_ms = pushback_ms


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class IdentityLimits:
    def __init__(
        self,
        *,
        max_streams: int = 0,
        rate_per_s: float = 0.0,
        burst: int = 0,
        max_concurrent: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_streams = max_streams
        self.rate = rate_per_s
        self.burst = float(burst or max(1, math.ceil(rate_per_s)))
        self.max_concurrent = max_concurrent
        self._clock = clock
        self.streams: dict[str, int] = {}
        self.unary: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}

    @property
    def limits_unary(self) -> bool:
        return self.rate > 0 or self.max_concurrent > 0

    def open_stream(self, identity: str) -> None:
        held = self.streams.get(identity, 0)
        if self.max_streams and held >= self.max_streams:
            raise LimitExceeded(
                f"too many streams for identity {identity}: {held} open "
                f"(limit {self.max_streams} per identity)",
                1000,
            )
        self.streams[identity] = held + 1

    def close_stream(self, identity: str) -> None:
        left = self.streams.get(identity, 1) - 1
        if left > 0:
            self.streams[identity] = left
        else:
            self.streams.pop(identity, None)

    def start_unary(self, identity: str) -> None:
        if self.rate > 0:
            self._take(identity)
        held = self.unary.get(identity, 0)
        if self.max_concurrent and held >= self.max_concurrent:
            raise LimitExceeded(
                f"too many concurrent calls for identity {identity} (limit {self.max_concurrent})",
                100,
            )
        self.unary[identity] = held + 1

    def end_unary(self, identity: str) -> None:
        left = self.unary.get(identity, 1) - 1
        if left > 0:
            self.unary[identity] = left
        else:
            self.unary.pop(identity, None)

    def _take(self, identity: str) -> None:
        now = self._clock()
        bucket = self._buckets.get(identity)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED:
                self._forget_full(now)
            bucket = self._buckets[identity] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            wait_ms = max(1, math.ceil((1.0 - bucket.tokens) / self.rate * 1000))
            raise LimitExceeded(
                f"rate limit for identity {identity}: {self.rate:g} calls/s "
                f"(burst {self.burst:g}); retry in {wait_ms} ms",
                wait_ms,
            )
        bucket.tokens -= 1.0

    def _forget_full(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.stamp) * self.rate >= self.burst:
                del self._buckets[key]
