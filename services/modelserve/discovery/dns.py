"""DNS discovery: each dependency's configured ``name:port`` resolved to A/AAAA records.

Meant for Kubernetes headless Services (``worker.modelserve.svc.cluster.local:8201``): the
cluster DNS answers one record per *ready* pod, so N pods behind one name are N instances,
each with its own channel (and, for workers, its own status stream in the router). Kubernetes
registers and deregisters pods itself (readiness probes decide who is published), so
register/deregister/update_meta do nothing here.

Names are the same ``<svc>_addr(s)`` settings static discovery reads; an IP literal passes
through unchanged. Names are re-resolved every ``refresh_s`` seconds, and early (at most once
per ``min_refresh_s``) when a caller reports an address failing (``suspect``: an endpoint
ejected, a worker's status stream lost), so a replaced pod is found without waiting a period.

Resolution goes through the event loop's ``getaddrinfo`` (so /etc/hosts and the pod's
resolv.conf search path apply), or, with ``server`` set, straight to that DNS server with
dnspython (tests point it at a local server; a cluster can bypass a node-local cache).

A name that does not exist (NXDOMAIN, no records: a headless Service with no ready pods)
resolves to no instances; a failed lookup (timeout, SERVFAIL) keeps the last answer, so a DNS
hiccup never empties a fleet.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

from modelserve.discovery.base import Discovery, Instance, Registration

__all__ = ["DNSDiscovery", "NameNotFound", "Resolver", "getaddrinfo_resolver", "split_host_port"]

log = logging.getLogger(__name__)

# (host) -> the IP addresses it resolves to now. Raises NameNotFound when the name has no
# records, any other exception when the lookup itself failed.
Resolver = Callable[[str], Awaitable[list[str]]]

_NOT_FOUND_GAI = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


class NameNotFound(LookupError):
    """The name exists nowhere or has no A/AAAA records: it has no instances right now."""


def split_host_port(addr: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"."""
    raw = addr.strip()
    if raw.startswith("["):
        host, sep, port = raw[1:].partition("]:")
    else:
        host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"DNS discovery needs 'name:port', got {addr!r}")
    return host, int(port)


def _join(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ipaddress.ip_address(ip).version == 6 else f"{ip}:{port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def getaddrinfo_resolver(host: str) -> list[str]:
    """The system resolver through the running loop: /etc/hosts, resolv.conf, search path."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in _NOT_FOUND_GAI:
            raise NameNotFound(host) from exc
        raise
    return [str(info[4][0]) for info in infos]


def dnspython_resolver(server: str, timeout_s: float = 2.0) -> Resolver:
    """Query A and AAAA at ``server`` ("ip" or "ip:port") directly, with dnspython."""
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    ip, port = (server, 53) if _is_ip(server) else split_host_port(server)
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [ip]
    resolver.port = port
    resolver.lifetime = timeout_s
    resolver.cache = None  # the refresh interval is the cache; never serve a stale pod

    async def resolve(host: str) -> list[str]:
        qname = host if host.endswith(".") else host + "."
        found: list[str] = []
        missing = 0
        for rdtype in ("A", "AAAA"):
            try:
                answer = await resolver.resolve(qname, rdtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                missing += 1
                continue
            found.extend(r.to_text() for r in answer)
        if missing == 2:
            raise NameNotFound(host)
        return found

    return resolve


class DNSDiscovery(Discovery):
    """Instances from the A/AAAA records of each service's configured name(s)."""

    def __init__(
        self,
        names: Mapping[str, Sequence[str]],
        *,
        refresh_s: float = 5.0,
        min_refresh_s: float = 0.5,
        resolver: Resolver | None = None,
        server: str = "",
    ) -> None:
        if refresh_s <= 0 or min_refresh_s < 0:
            raise ValueError("refresh_s must be positive and min_refresh_s not negative")
        self._names = {
            svc: [split_host_port(a) for a in addrs if a] for svc, addrs in names.items()
        }
        self._refresh_s = refresh_s
        self._min_refresh_s = min(min_refresh_s, refresh_s)
        if resolver is None:
            resolver = dnspython_resolver(server) if server else getaddrinfo_resolver
        self._resolver = resolver
        self._last: dict[tuple[str, str, int], list[Instance]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._closed = asyncio.Event()

    # -- Kubernetes registers pods; nothing to do ---------------------------------------

    async def register(self, registration: Registration) -> None:
        return None

    async def update_meta(self, registration: Registration) -> None:
        return None

    async def deregister(self, registration: Registration) -> None:
        return None

    # -- resolve / watch --------------------------------------------------------------------

    def suspect(self, service: str, address: str) -> None:
        """A caller saw ``address`` fail: re-resolve ``service`` now rather than next period."""
        log.debug("re-resolving %s early: %s failed", service, address)
        self._event(service).set()

    async def resolve(self, service: str) -> list[Instance]:
        out: list[Instance] = []
        for host, port in self._names.get(service, []):
            out.extend(await self._resolve_name(service, host, port))
        # One instance per address, whichever names led to it; sorted so "changed" means it.
        unique = {i.address: i for i in out}
        return [unique[a] for a in sorted(unique)]

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        last: list[Instance] | None = None
        wake = self._event(service)
        loop = asyncio.get_running_loop()
        while not self._closed.is_set():
            started = loop.time()
            wake.clear()
            instances = await self.resolve(service)
            if instances != last:
                last = instances
                yield instances
            # Sleep a period, or until a caller reports a failure (not sooner than the floor).
            with_floor = max(0.0, self._min_refresh_s - (loop.time() - started))
            try:
                await asyncio.wait_for(wake.wait(), timeout=self._refresh_s)
            except TimeoutError:
                continue
            if with_floor:
                await asyncio.sleep(with_floor)

    async def close(self) -> None:
        self._closed.set()
        for event in self._wake.values():
            event.set()

    # -- internals --------------------------------------------------------------------------

    def _event(self, service: str) -> asyncio.Event:
        event = self._wake.get(service)
        if event is None:
            event = self._wake[service] = asyncio.Event()
        return event

    async def _resolve_name(self, service: str, host: str, port: int) -> list[Instance]:
        key = (service, host, port)
        if _is_ip(host):
            ips = [host]
        else:
            try:
                ips = await self._resolver(host)
            except NameNotFound:
                ips = []
            except Exception as exc:  # any lookup failure keeps the last answer
                log.warning(
                    "resolving %s for %s failed (%s: %s); keeping %d known instance(s)",
                    host,
                    service,
                    type(exc).__name__,
                    exc,
                    len(self._last.get(key, [])),
                )
                return self._last.get(key, [])
        addresses = sorted({_join(ip, port) for ip in ips})
        instances = [
            Instance(service=service, instance_id=f"{service}-{a}", address=a) for a in addresses
        ]
        self._last[key] = instances
        return instances
