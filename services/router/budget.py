"""RELIABILITY.md's budget for a side call on the request path (feature store, Redis):
min(50 ms, 20 % of the caller's remaining deadline), so a slow dependency fails or is
bypassed fast instead of eating the whole deadline."""

from __future__ import annotations

from dataclasses import dataclass

from grpc import aio


@dataclass(frozen=True)
class Budget:
    cap_s: float = 0.05
    fraction: float = 0.2

    def seconds(self, context: aio.ServicerContext | None) -> float:
        """The budget while serving ``context`` (the cap when the caller set no deadline)."""
        remaining = context.time_remaining() if context is not None else None
        if remaining is None:
            return self.cap_s
        return min(self.cap_s, max(remaining, 0.0) * self.fraction)
