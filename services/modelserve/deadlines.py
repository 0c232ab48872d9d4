"""The one deadline vocabulary of every hop (RELIABILITY.md, "Deadlines").

A request's deadline is read once, where it enters a process, into a ``Deadline`` (an absolute
monotonic instant, or none) and carried explicitly from there; nothing below a servicer reads
``context.time_remaining()`` again. The rules, each in one method:

- at the public edge a client's deadline is clamped to [min, max], and a request without one
  gets the default (``EdgeDeadlines.admit``);
- a call to the next hop gets what remains less a per-hop margin of max(2 ms, 5 %), and is not
  made when nothing would be left (``Deadline.for_hop``);
- a side call on the request path (feature store, Redis) gets min(cap, 20 % of what remains)
  (``Deadline.side_call``), so a slow dependency fails or is bypassed fast;
- sequential steps (chain steps, stacking) each get an equal share of what remains when they
  start (``Deadline.share``);
- a hop refuses work it has no time to start (``Deadline.require``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from modelserve.errors import DeadlineExceededError

HOP_MARGIN_MIN_S = 0.002
HOP_MARGIN_FRACTION = 0.05
SIDE_CALL_CAP_S = 0.05
SIDE_CALL_FRACTION = 0.2


class HasTimeRemaining(Protocol):
    def time_remaining(self) -> float | None: ...


@dataclass(slots=True)  # built per request: slots, not frozen (frozen inits are slower)
class Deadline:
    """When the caller stops waiting, on ``time.monotonic()``'s clock; ``at`` None: never."""

    at: float | None = None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds)

    @classmethod
    def of(cls, context: HasTimeRemaining | None) -> Deadline:
        """The deadline a gRPC caller set on ``context`` (none when it set none)."""
        remaining = context.time_remaining() if context is not None else None
        return cls(None if remaining is None else time.monotonic() + remaining)

    def remaining(self) -> float | None:
        if self.at is None:
            return None
        return max(self.at - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def for_hop(self, default: float | None = None) -> float | None:
        """The timeout of a call to the next hop: what remains less the per-hop margin.

        ``default`` when the caller set no deadline. DEADLINE_EXCEEDED when nothing is left.
        """
        remaining = self.remaining()
        if remaining is None:
            return default
        budget = remaining - max(HOP_MARGIN_MIN_S, remaining * HOP_MARGIN_FRACTION)
        if budget <= 0:
            raise DeadlineExceededError("deadline exceeded before the request could be forwarded")
        return budget

    def side_call(self, cap_s: float = SIDE_CALL_CAP_S) -> float:
        """The time a side call may take: min(cap, 20 % of what remains); the cap without one."""
        remaining = self.remaining()
        if remaining is None:
            return cap_s
        return min(cap_s, remaining * SIDE_CALL_FRACTION)

    def share(self, steps_left: int) -> Deadline:
        """The deadline of the next of ``steps_left`` sequential steps: an equal share."""
        remaining = self.remaining()
        if remaining is None:
            return self
        return Deadline.after(remaining / max(steps_left, 1))

    def require(self, min_s: float, what: str) -> None:
        """DEADLINE_EXCEEDED unless at least ``min_s`` remains to start ``what``."""
        if self.at is None:
            return
        remaining = self.at - time.monotonic()
        if remaining < min_s:
            raise DeadlineExceededError(
                f"only {remaining * 1000:.1f} ms of deadline left; {what} needs at least "
                f"{min_s * 1000:.1f} ms to start"
            )

    def monotonic_or(self, default_s: float) -> float:
        """The instant itself, or ``default_s`` from now when there is none."""
        return self.at if self.at is not None else time.monotonic() + default_s


@dataclass(frozen=True)
class EdgeDeadlines:
    """The public edge's rule: a client's deadline clamped to [min_s, max_s], or default_s."""

    default_s: float
    min_s: float
    max_s: float

    def admit(self, context: HasTimeRemaining) -> Deadline:
        remaining = context.time_remaining()
        value = self.default_s if remaining is None else remaining
        return Deadline(time.monotonic() + min(max(value, self.min_s), self.max_s))
