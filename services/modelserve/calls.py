"""The one outbound-call helper every hop uses (gateway -> router, router -> worker, router ->
feature store, fan-outs for statistics).

``Call`` is what a request carries from the servicer that received it to every call made on its
behalf: its ``Deadline`` and the caller metadata that must travel with it (``x-request-id`` so a
client's id reaches every hop's logs, ``x-routing-key`` so routing by key works at any hop).
``Hop.unary`` makes one call to some instance of a peer service: picks an endpoint, counts it
outstanding (for power-of-two-choices), ejects endpoints that fail, retries on another endpoint
on UNAVAILABLE (inference is idempotent), sends the W3C trace context and the forwarded
metadata, sets the timeout from the deadline, and turns the peer's status into our error model
(transport details stripped). No hop hand-writes that loop again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from prometheus_client import Gauge

from modelserve import tracing
from modelserve.auth.client import service_authorization
from modelserve.auth.identity import CALLER_METADATA, current_identity
from modelserve.channels import Endpoint, pick
from modelserve.deadlines import Deadline, EdgeDeadlines
from modelserve.errors import ModelServeError, UnavailableError, from_rpc_error
from modelserve.tracing import note, outbound_metadata

log = logging.getLogger(__name__)
T = TypeVar("T")
# Caller metadata that travels with a request to every hop; everything else stays where it came.
# x-modelserve-fallback: the version a request routed by a policy may fall back to when no
# worker holds its version READY (written by the hop that decided; the gateway drops a
# caller's own).
FALLBACK_METADATA = "x-modelserve-fallback"
# CALLER_METADATA (x-modelserve-caller): the identity the edge authenticated, for the logs of
# the hops behind it; believed only from a service identity (never a credential: each hop
# authenticates the service token it gets).
FORWARDED_METADATA = ("x-request-id", "x-routing-key", FALLBACK_METADATA, CALLER_METADATA)
MAX_FORWARDED_VALUE = 256
Metadata = tuple[tuple[str, str], ...]
NO_DEADLINE = Deadline()
# Calls this process has out to a peer service right now, by peer. Every call made through
# Hop.unary or fan_out is counted here as well as on its endpoint (power of two choices), so a
# test or an operator can see that a finished request left nothing outstanding (T13).
OUTSTANDING = Gauge(
    "modelserve_calls_outstanding", "Outbound calls in progress to a peer service", ["peer"]
)


@dataclass(slots=True)  # built per request: slots, not frozen; treat it as immutable
class Call:
    """A request in flight through this process: its deadline and its forwarded metadata."""

    deadline: Deadline = field(default_factory=Deadline)
    forwarded: Metadata = ()

    @classmethod
    def incoming(cls, context: Any, edge: EdgeDeadlines | None = None) -> Call:
        """Read once from the servicer context: the deadline (clamped at the edge) and the
        metadata worth forwarding."""
        deadline = edge.admit(context) if edge is not None else Deadline.of(context)
        remaining = deadline.remaining()
        if remaining is not None:
            note("modelserve.deadline_remaining_ms", remaining * 1000)
        return cls(deadline, _with_caller(forwarded_of(context.invocation_metadata())))

    def with_deadline(self, deadline: Deadline) -> Call:
        return Call(deadline, self.forwarded)

    def with_fallback(self, version: int) -> Call:
        """This call carrying fallback ``version`` (0: none), any earlier one dropped."""
        kept = tuple(kv for kv in self.forwarded if kv[0] != FALLBACK_METADATA)
        if version > 0:
            kept += ((FALLBACK_METADATA, str(version)),)
        return Call(self.deadline, kept)

    def fallback(self) -> int:
        for key, value in self.forwarded:
            if key == FALLBACK_METADATA:
                return int(value) if value.isascii() and value.isdigit() else 0
        return 0

    def request_ids(self) -> list[str]:
        return [v for k, v in self.forwarded if k == "x-request-id"]


def forwarded_of(metadata: Iterable[tuple[str, Any]] | None) -> Metadata:
    out = []
    for key, value in metadata or ():
        if key in FORWARDED_METADATA and isinstance(value, str):
            out.append((key, value[:MAX_FORWARDED_VALUE]))
    return tuple(out)


def _with_caller(forwarded: Metadata) -> Metadata:
    """``forwarded`` with the caller named as authenticated here: a service identity's
    forwarded caller is kept, anyone else is named themselves (a caller's own header is
    dropped); without auth no caller travels."""
    identity = current_identity()
    if identity is not None and identity.is_service:
        return forwarded
    if any(k == CALLER_METADATA for k, _ in forwarded):
        forwarded = tuple(kv for kv in forwarded if kv[0] != CALLER_METADATA)
    if identity is not None:
        forwarded += ((CALLER_METADATA, identity.id[:MAX_FORWARDED_VALUE]),)
    return forwarded


Pick = Callable[[set[str]], Endpoint | None]
Method = Callable[[Endpoint], Callable[..., Awaitable[T]]]
Translate = Callable[[grpc.RpcError], ModelServeError]


def hop_metadata(forwarded: Sequence[tuple[str, str]]) -> list[tuple[str, str | bytes]]:
    """Metadata for a call ``Hop``/``fan_out`` makes on ``Endpoint.hot_stub`` (a channel
    without client interceptors): what the caller forwards plus this service's token. The
    trace context is added per attempt (``tracing.start_client_span``)."""
    metadata = outbound_metadata(forwarded)
    authorization = service_authorization()
    if authorization is not None:
        metadata.append(authorization)
    return metadata


def _method_name(send: Any) -> str:
    """The full method of a grpc.aio multi-callable (``/package.Service/Method``)."""
    raw = getattr(send, "_method", b"")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class RetryBudget:
    """Retries may add at most ``ratio`` of the first attempts made in the last ``ttl_s``
    seconds, plus a reserve of ``burst`` (Finagle's retry budget, whose deposits expire after a
    TTL; the same goal as gRPC's retryThrottling): when a whole fleet answers UNAVAILABLE, a hop
    sends at most ~1.1 calls per request (RELIABILITY-CASES T19; RELIABILITY.md's 10 tokens and
    0.1 ratio) instead of doubling the load at every hop (with two routers one request could
    reach four worker attempts).

    Why a window and not a bucket capped at ``burst``: a kill -9 of one of two workers fails
    every call in flight to it at once (at c=64 through the direct lane, ~15 merged calls). A
    capped bucket holds 10 tokens however busy the hop is, so the 11th of those calls failed
    although the other worker was healthy (an e2e drain run lost 6 of 5,130 requests). Earnings
    kept for ``ttl_s`` scale the allowance with the traffic, still ≤ ``ratio`` of it.
    """

    def __init__(self, ratio: float = 0.1, burst: float = 10.0, ttl_s: int = 10) -> None:
        self.ratio = ratio
        self.burst = burst
        self.ttl_s = ttl_s
        # One slot per second of the window: [second, first attempts, retries].
        self._slots = [[-1, 0, 0] for _ in range(ttl_s)]
        self.spent = 0  # retries made
        self.denied = 0  # retries the budget refused

    def _slot(self, now: int) -> list[int]:
        slot = self._slots[now % self.ttl_s]
        if slot[0] != now:
            slot[0], slot[1], slot[2] = now, 0, 0
        return slot

    def earn(self) -> None:
        self._slot(int(time.monotonic()))[1] += 1

    @property
    def tokens(self) -> float:
        """Retries the budget allows now."""
        oldest = int(time.monotonic()) - self.ttl_s
        earned = retried = 0
        for second, first, retries in self._slots:
            if second > oldest:
                earned += first
                retried += retries
        return self.burst + self.ratio * earned - retried

    def spend(self) -> bool:
        if self.tokens < 1.0:
            self.denied += 1
            return False
        self._slot(int(time.monotonic()))[2] += 1
        self.spent += 1
        return True


@dataclass(frozen=True)
class Hop:
    """Calls to the instances of one peer service (``peer`` names it in messages)."""

    peer: str
    attempts: int = 2  # 1 + retries on another endpoint after UNAVAILABLE
    default_timeout: float | None = None  # when the caller set no deadline
    eject_on: tuple[grpc.StatusCode, ...] = (grpc.StatusCode.UNAVAILABLE,)
    retry_on: tuple[grpc.StatusCode, ...] = (grpc.StatusCode.UNAVAILABLE,)
    budget: RetryBudget = field(default_factory=RetryBudget)

    async def unary(
        self,
        pick: Pick,
        method: Method[T],
        request: Any,
        call: Call,
        *,
        timeout: float | None = None,
        translate: Translate | None = None,
        none_left: str | None = None,
    ) -> T:
        """``method(endpoint)(request)`` on an endpoint ``pick`` chooses, with the rules above.

        ``timeout`` overrides the deadline's hop timeout (side calls); ``none_left`` is the
        UNAVAILABLE message when ``pick`` finds no endpoint at all.
        """
        tried: set[str] = set()
        last: grpc.RpcError | None = None
        metadata = hop_metadata(call.forwarded)
        traced = tracing.enabled()
        outstanding = OUTSTANDING.labels(self.peer)
        self.budget.earn()
        for attempt in range(max(1, self.attempts)):
            if attempt and not self.budget.spend():
                break  # over the retry budget: the last error goes back to the caller
            endpoint = pick(tried)
            if endpoint is None:
                break
            tried.add(endpoint.address)
            hop_timeout = (
                timeout if timeout is not None else call.deadline.for_hop(self.default_timeout)
            )
            if hop_timeout is not None:
                note(f"modelserve.hop_timeout_ms.{self.peer}", hop_timeout * 1000)
            send = method(endpoint)
            span = None
            sent = metadata
            if traced:
                span, context = tracing.start_client_span(_method_name(send))
                sent = [*metadata, *context]
            endpoint.outstanding += 1  # from here on undone in the finally below
            outstanding.inc()
            try:
                result = await send(request, timeout=hop_timeout, metadata=sent)
            except grpc.RpcError as exc:
                tracing.end_client_span(span, exc.code())
                if exc.code() in self.eject_on:
                    endpoint.record_failure()
                if exc.code() not in self.retry_on:
                    raise self._translate(exc, translate) from None
                last = exc
                log.info("%s %s unavailable; trying another", self.peer, endpoint.address)
                continue
            except BaseException:
                tracing.end_client_span(span, grpc.StatusCode.CANCELLED)
                raise
            finally:
                endpoint.outstanding -= 1
                outstanding.dec()
            tracing.end_client_span(span, grpc.StatusCode.OK)
            endpoint.record_success()
            return result
        if last is not None:
            raise self._translate(last, translate) from None
        raise UnavailableError(none_left or f"no {self.peer} available")

    def _translate(self, exc: grpc.RpcError, translate: Translate | None) -> ModelServeError:
        return translate(exc) if translate is not None else from_rpc_error(exc, self.peer)


def pick_from(endpoints: Callable[[], Sequence[Endpoint]]) -> Pick:
    """A ``Pick`` over whatever ``endpoints()`` returns at call time (power of two choices)."""
    return lambda tried: pick(endpoints(), tried)


async def fan_out(
    endpoints: Sequence[Endpoint],
    method: Method[T],
    request: Any,
    call: Call,
    *,
    default_timeout: float,
    peer: str = "workers",
) -> list[T | BaseException]:
    """``method(endpoint)(request)`` on every endpoint at once (statistics from each worker);
    each result or the error it raised, in ``endpoints`` order."""
    timeout = call.deadline.for_hop(default_timeout)
    metadata = hop_metadata(call.forwarded)
    outstanding = OUTSTANDING.labels(peer)

    async def one(endpoint: Endpoint) -> T:
        send = method(endpoint)
        span, context = (
            tracing.start_client_span(_method_name(send)) if tracing.enabled() else (None, [])
        )
        endpoint.outstanding += 1
        outstanding.inc()
        code = grpc.StatusCode.CANCELLED
        try:
            result = await send(request, timeout=timeout, metadata=[*metadata, *context])
            code = grpc.StatusCode.OK
            return result
        except grpc.RpcError as exc:
            code = exc.code()
            raise
        finally:
            tracing.end_client_span(span, code)
            endpoint.outstanding -= 1
            outstanding.dec()

    return await asyncio.gather(*(one(e) for e in endpoints), return_exceptions=True)
