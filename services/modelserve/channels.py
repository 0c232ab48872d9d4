"""Client side of every internal hop: channel options, deadlines, and balancing.

One channel per endpoint; requests go to the endpoint with fewer outstanding requests out of
two picked at random (power of two choices); an endpoint that fails with UNAVAILABLE or a
transport error is ejected for a while (30 s x ejection count, capped at 300 s, RELIABILITY.md
"Outlier ejection"), and at most half the endpoints are ever ejected, so a fleet that looks
all-bad still gets traffic (panic threshold).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grpc import aio

from modelserve import tracing
from modelserve.auth.client import outbound_interceptors
from modelserve.errors import UnavailableError
from modelserve.settings import MIB
from modelserve.tls import ClientTLS, client_tls

# RELIABILITY.md, "Keepalive, internal channels".
INTERNAL_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


# gRPC's default reconnect backoff grows to 120 s: a peer restarted on its address (the
# supervisor, a rescheduled pod) stayed unreachable for seconds after it listened again, and a
# gateway answered "router unavailable" meanwhile. Internal peers are cheap to probe: 0.1 s
# growing to 1 s.
RECONNECT_BACKOFF = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


# What internal channels send and internal servers accept at least (above the gateway's 16 MiB).
INTERNAL_MESSAGE_BYTES = 64 * MIB


def channel_options(max_message_bytes: int = INTERNAL_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Options for internal channels: internal hops accept at least what the gateway does."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 0),  # retries are the router's decision, on another replica
        *INTERNAL_KEEPALIVE,
        *RECONNECT_BACKOFF,
    ]


def channel_interceptors() -> list[aio.ClientInterceptor]:
    """What every intercepted internal channel runs per call: the service token
    (modelserve.auth.client) and CLIENT spans while tracing is on; none otherwise."""
    return [*(outbound_interceptors() or []), *tracing.client_interceptors()]


def internal_channel(
    address: str,
    max_message_bytes: int = INTERNAL_MESSAGE_BYTES,
    *,
    tls: ClientTLS | None = None,
    intercepted: bool = True,
) -> aio.Channel:
    """The one way a service opens a channel to another: plaintext while TLS is off, else a
    secure channel verifying the peer with the CA and showing this service's certificate
    (mTLS). ``tls`` defaults to the process's (``modelserve.tls.configure_client_tls``).
    ``intercepted=False``: no client interceptors, for callers that send the token and the
    trace context themselves (``Endpoint.hot_stub``, ``calls.Hop``)."""
    tls = tls if tls is not None else client_tls()
    options = channel_options(max_message_bytes)
    interceptors = (channel_interceptors() if intercepted else None) or None
    if tls is None:
        return aio.insecure_channel(address, options=options, interceptors=interceptors)
    return aio.secure_channel(
        address,
        tls.credentials(),
        options=[*options, *tls.options()],
        interceptors=interceptors,
    )


log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
EJECT_AFTER_FAILURES = 5
EJECT_BASE_S = 30.0
EJECT_MAX_S = 300.0


@dataclass
class Endpoint:
    """One remote instance: its channel, stubs made on it, and its health as we see it."""

    address: str
    channel: aio.Channel
    outstanding: int = 0
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    stubs: dict[Any, Any] = field(default_factory=dict)
    # Told the address when this endpoint is ejected (DNS discovery re-resolves early).
    on_eject: Callable[[str], None] | None = None
    # The same peer without client interceptors (None when ``channel`` has none): calls made
    # through ``calls.Hop`` send the token and trace context as metadata themselves, because
    # a grpc.aio client interceptor turns every call into an intercepted call (an extra task
    # and callbacks per call). Same target and options, so gRPC shares the connection.
    plain: aio.Channel | None = None
    hot_stubs: dict[Any, Any] = field(default_factory=dict)

    def stub(self, stub_cls: Callable[[aio.Channel], Any]) -> Any:
        """A cached stub of ``stub_cls`` on this endpoint's channel."""
        found = self.stubs.get(stub_cls)
        if found is None:
            found = stub_cls(self.channel)
            self.stubs[stub_cls] = found
        return found

    def hot_stub(self, stub_cls: Callable[[aio.Channel], Any]) -> Any:
        """A cached stub of ``stub_cls`` for calls made through ``calls.Hop`` / ``fan_out``
        (which add the service token and trace context): on the uninterceptored channel."""
        found = self.hot_stubs.get(stub_cls)
        if found is None:
            found = stub_cls(self.plain if self.plain is not None else self.channel)
            self.hot_stubs[stub_cls] = found
        return found

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now

    def record_success(self) -> None:
        self.consecutive_failures = 0

    def record_failure(self, eject_after: int = EJECT_AFTER_FAILURES) -> bool:
        """Count a retryable failure; eject once ``eject_after`` happen in a row."""
        self.consecutive_failures += 1
        if self.consecutive_failures < eject_after:
            return False
        self.ejections += 1
        self.ejected_until = time.monotonic() + min(EJECT_BASE_S * self.ejections, EJECT_MAX_S)
        self.consecutive_failures = 0
        if self.on_eject is not None:
            self.on_eject(self.address)
        return True

    async def close(self) -> None:
        await self.channel.close()
        if self.plain is not None:
            await self.plain.close()


def pick(candidates: Sequence[Endpoint], exclude: Iterable[str] = ()) -> Endpoint | None:
    """Power of two choices on outstanding requests among non-ejected candidates.

    If every candidate is ejected (or excluded), ejected ones are used anyway rather than
    failing: ejection is advice, and an all-ejected fleet is better tried than refused.
    """
    excluded = set(exclude)
    pool = [e for e in candidates if e.address not in excluded]
    if not pool:
        return None
    now = time.monotonic()
    healthy = [e for e in pool if not e.ejected(now)]
    if len(healthy) * 2 < len(pool):  # panic threshold 50 %: ignore ejections
        healthy = pool
    if len(healthy) == 1:
        return healthy[0]
    a, b = random.sample(healthy, 2)
    return a if a.outstanding <= b.outstanding else b


class EndpointSet:
    """Channels to the instances of one service, kept in step with discovery."""

    def __init__(
        self, max_message_bytes: int = 64 * MIB, *, on_eject: Callable[[str], None] | None = None
    ) -> None:
        self._max_message_bytes = max_message_bytes
        self.endpoints: dict[str, Endpoint] = {}
        self.on_eject = on_eject  # given to every endpoint opened from now on

    async def update(self, addresses: Iterable[str]) -> tuple[list[Endpoint], list[Endpoint]]:
        """Open channels to new addresses, close removed ones; returns (added, removed)."""
        wanted = set(addresses)
        added = []
        for address in sorted(wanted - self.endpoints.keys()):
            plain = (
                internal_channel(address, self._max_message_bytes, intercepted=False)
                if channel_interceptors()
                else None
            )
            endpoint = Endpoint(
                address,
                internal_channel(address, self._max_message_bytes),
                on_eject=self.on_eject,
                plain=plain,
            )
            self.endpoints[address] = endpoint
            added.append(endpoint)
        removed = [self.endpoints.pop(a) for a in sorted(self.endpoints.keys() - wanted)]
        for endpoint in removed:
            await endpoint.close()
        return added, removed

    def pick(self, exclude: Iterable[str] = ()) -> Endpoint | None:
        return pick(list(self.endpoints.values()), exclude)

    async def close(self) -> None:
        for endpoint in self.endpoints.values():
            await endpoint.close()
        self.endpoints.clear()


async def follow(discovery: Any, service: str, endpoints: EndpointSet) -> None:
    """Keep ``endpoints`` equal to the passing instances of ``service``, forever; an endpoint
    ejected for failing asks discovery to look again early (``Discovery.suspect``)."""
    endpoints.on_eject = functools.partial(discovery.suspect, service)
    async for instances in discovery.watch(service):
        await endpoints.update(i.address for i in instances)


async def follow_stream(
    *,
    discovery: Any,
    service: str,
    endpoints: EndpointSet,
    open_stream: Callable[[Endpoint], AsyncIterator[T]],
    apply: Callable[[T], None],
    what: str,
) -> None:
    """Apply every message of a long-lived server stream (a watch) forever: pick an instance
    of ``service``, open the stream, and on any failure reconnect with jittered backoff."""
    delay = 0.05
    while True:
        endpoint: Endpoint | None = None
        try:
            instances = await discovery.resolve(service)
            await endpoints.update(i.address for i in instances)
            endpoint = endpoints.pick()
            if endpoint is None:
                raise ConnectionError(f"no {service} instance found by discovery")
            async for message in open_stream(endpoint):
                apply(message)
                delay = 0.05
        except asyncio.CancelledError:
            raise
        except (grpc.RpcError, ConnectionError, OSError, UnavailableError) as exc:
            # UnavailableError: discovery itself cannot answer (a Consul agent away and
            # nothing known yet); the watch waits it out like a broken stream.
            log.warning("%s interrupted (%s); retrying in %.2fs", what, _describe(exc), delay)
            if endpoint is not None:
                discovery.suspect(service, endpoint.address)
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__
