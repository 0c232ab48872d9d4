"""Consul discovery: the local agent's HTTP API, no Consul SDK.

Endpoints used (Consul agent HTTP API):
  PUT /v1/agent/service/register           register / update_meta (register is an upsert)
  PUT /v1/agent/service/deregister/:id     deregister
  GET /v1/agent/service/:id                reconcile: is our registration still there?
  GET /v1/health/service/:name?passing     resolve, and watch as a blocking query (index, wait)

Each instance carries a gRPC health check run by the agent with RELIABILITY.md's defaults, so
a process that turns NOT_SERVING (draining, not warm yet) drops out of every resolve/watch.

Registrations are reconciled (T32): an agent that restarts without its state (a dev agent, a
lost data dir, a node rebuilt) forgets our service, and nothing else would register it again
until the next meta change. Every ``reconcile_s`` (10 s) each registration this process holds
is looked up on the agent and registered again when it is missing; a deregistered one never
is (deregister and the re-registration take one lock).

An agent outage (T32) changes no routing: a watch that cannot reach the agent keeps what it
yielded last, and ``resolve`` answers the last-known passing set (when it has one) instead of
failing. When the agent answers again, removals are held for ``return_hold_s`` (default:
``reconcile_s`` + (success_before_passing + 1) x check interval, the time every instance needs
to be registered again and pass its first checks): an agent back without its state, or with
its checks restarted critical, answers a smaller or empty set at first, and following it would
take healthy replicas out of rotation and put them back seconds later (flapping). Additions
apply at once; an instance that really died meanwhile is left to the callers' ejection until
the hold ends.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from modelserve.discovery.base import Discovery, Instance, Registration
from modelserve.errors import (
    InvalidArgumentError,
    ModelServeError,
    PermissionDeniedError,
    UnavailableError,
)

__all__ = ["ConsulDiscovery", "format_duration", "parse_duration", "validate_meta"]

log = logging.getLogger(__name__)

# Consul's own limits on service meta (agent/structs: metaMaxKeyPairs, metaKeyMaxLength,
# metaValueMaxLength, metaKeyFormat, MetaKeyReservedPrefix).
META_MAX_PAIRS = 64
META_KEY_MAX_LEN = 128
META_VALUE_MAX_LEN = 512
_META_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_META_RESERVED_PREFIX = "consul-"

# The agent raises shorter values than these silently; we warn so nobody is misled.
_CONSUL_MIN_CHECK_INTERVAL_S = 1.0
_CONSUL_MIN_DEREGISTER_AFTER_S = 60.0
_CONSUL_MAX_WAIT_S = 600.0  # blocking queries are capped at 10 minutes

# Plain requests (register, resolve): short, since startup and drain wait on them.
_REQUEST_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
# Watch errors: exponential backoff with jitter, capped, so a dead agent is not hammered.
_BACKOFF_INITIAL_S = 0.2
_BACKOFF_MAX_S = 10.0
# Consul's blocking-query guidance: rate limit the loop with a token bucket of burst 2 so a
# churning result degrades to polling instead of a busy loop.
_WATCH_BURST = 2.0
_WATCH_REFILL_S = 1.0

_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string ("30s", "1m30s", "250ms"), as Consul reads them."""
    s = text.strip()
    if s == "0":
        return 0.0  # Go accepts a bare zero, and only zero, without a unit
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"invalid duration {text!r}; expected a Go duration such as '30s'")
    return total


def format_duration(seconds: float) -> str:
    """A Go duration string for ``seconds``, whole seconds where possible ("5s", "100ms")."""
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {seconds}")
    ms = round(seconds * 1000, 3)
    if ms >= 1000 and ms % 1000 == 0:
        return f"{int(ms // 1000)}s"
    if ms >= 1:
        # Fixed-point, never exponent notation, which Go's ParseDuration rejects.
        return f"{ms:.3f}".rstrip("0").rstrip(".") + "ms"
    return f"{round(seconds * 1e6)}us"


def validate_meta(meta: Mapping[str, str]) -> None:
    """Raise ValueError for meta Consul would refuse, naming the offending key."""
    if len(meta) > META_MAX_PAIRS:
        raise ValueError(f"Consul allows at most {META_MAX_PAIRS} meta pairs, got {len(meta)}")
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"meta keys and values must be strings, got {key!r}: {value!r}")
        if not _META_KEY_RE.fullmatch(key):
            raise ValueError(f"meta key {key!r} must be non-empty and only use [A-Za-z0-9_-]")
        if len(key) > META_KEY_MAX_LEN:
            raise ValueError(f"meta key {key[:40]!r}... is longer than {META_KEY_MAX_LEN} chars")
        if key.startswith(_META_RESERVED_PREFIX):
            raise ValueError(f"meta key {key!r}: prefix {_META_RESERVED_PREFIX!r} is Consul's")
        # Consul counts bytes (Go len), not characters.
        if len(value.encode()) > META_VALUE_MAX_LEN:
            raise ValueError(
                f"meta value for {key!r} is {len(value.encode())} bytes; "
                f"Consul allows {META_VALUE_MAX_LEN}"
            )


def _split_addr(addr: str) -> tuple[str, str | None, str]:
    """(base_url, unix socket path or None, display form) from a CONSUL_HTTP_ADDR value."""
    raw = addr.strip()
    if not raw:
        raise ValueError("Consul address is empty; expected e.g. '127.0.0.1:8500'")
    if raw.startswith("unix://"):
        path = raw[len("unix://") :]
        if not path.startswith("/"):
            raise ValueError(f"unix socket address must be absolute: {addr!r}")
        # httpx needs some host in the URL; the agent ignores it on a socket.
        return "http://consul", path, raw
    if "://" not in raw:
        raw = "http://" + raw  # what Consul's own clients assume without CONSUL_HTTP_SSL
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"Consul address scheme must be http, https or unix: {addr!r}")
    if not parts.hostname:
        raise ValueError(f"Consul address has no host: {addr!r}")
    netloc = parts.netloc.rsplit("@", 1)[-1]
    display = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return raw.rstrip("/"), None, display


def _host_port(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass  # a hostname
    return f"{host}:{port}"


class ConsulDiscovery(Discovery):
    """Discovery through a Consul agent; logical "worker" is Consul's "modelserve-worker"."""

    def __init__(
        self,
        addr: str = "http://127.0.0.1:8500",
        token: str = "",
        *,
        service_prefix: str = "modelserve-",
        check_interval_s: float = 5,
        check_timeout_s: float = 2,
        deregister_critical_after: str = "10m",
        success_before_passing: int = 2,
        failures_before_critical: int = 2,
        wait: str = "30s",
        reconcile_s: float = 10.0,
        return_hold_s: float | None = None,
    ) -> None:
        base_url, uds, self._display_addr = _split_addr(addr)
        if check_interval_s <= 0 or check_timeout_s <= 0:
            raise ValueError("check_interval_s and check_timeout_s must be positive")
        if success_before_passing < 0 or failures_before_critical < 0:
            raise ValueError("success_before_passing and failures_before_critical must be >= 0")
        if check_interval_s < _CONSUL_MIN_CHECK_INTERVAL_S:
            log.warning("Consul raises check intervals below 1s to 1s (got %ss)", check_interval_s)
        dereg_s = parse_duration(deregister_critical_after)
        if dereg_s <= 0:
            raise ValueError("deregister_critical_after must be positive, e.g. '10m'")
        if dereg_s < _CONSUL_MIN_DEREGISTER_AFTER_S:
            log.warning("Consul raises deregister_critical_after below 1m to 1m")
        self._wait_s = parse_duration(wait)
        if not 0 < self._wait_s <= _CONSUL_MAX_WAIT_S:
            raise ValueError(f"wait must be within (0, 10m], got {wait!r}")
        self._wait = wait.strip()
        self._prefix = service_prefix
        self._token = token
        self._check = {
            "Interval": format_duration(check_interval_s),
            "Timeout": format_duration(check_timeout_s),
            "DeregisterCriticalServiceAfter": deregister_critical_after.strip(),
            "SuccessBeforePassing": success_before_passing,
            "FailuresBeforeCritical": failures_before_critical,
        }
        headers = {"X-Consul-Token": token} if token else {}
        transport = httpx.AsyncHTTPTransport(uds=uds) if uds else None
        # trust_env off: a proxy from the environment must not see the agent's token.
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            transport=transport,
            timeout=_REQUEST_TIMEOUT,
            trust_env=False,
        )
        self._closed = False
        if reconcile_s <= 0:
            raise ValueError("reconcile_s must be positive")
        self._reconcile_s = reconcile_s
        if return_hold_s is None:
            return_hold_s = reconcile_s + (success_before_passing + 1) * check_interval_s
        if return_hold_s < 0:
            raise ValueError("return_hold_s must be >= 0")
        self._return_hold_s = return_hold_s
        self._known: dict[str, list[Instance]] = {}  # last passing set read per service
        self._registered: dict[str, Registration] = {}  # what this process has announced
        self._registering = asyncio.Lock()
        self._reconciler: asyncio.Task[None] | None = None
        self.reregistrations = 0  # times the agent had lost us and we registered again

    # -- Discovery ------------------------------------------------------------------------

    async def register(self, registration: Registration) -> None:
        await self._announce(registration, op="register")

    async def update_meta(self, registration: Registration) -> None:
        # The agent's register is an upsert and keeps the check's current status, so a
        # meta change does not flap the instance out of rotation.
        await self._announce(registration, op="update meta")

    async def deregister(self, registration: Registration) -> None:
        async with self._registering:
            self._registered.pop(registration.instance_id, None)
            path = "/v1/agent/service/deregister/" + quote(registration.instance_id, safe="")
            resp = await self._request("PUT", path, op="deregister", ok=(200, 404))
        if resp.status_code == 404:
            log.info("Consul no longer knew %s; nothing to deregister", registration.instance_id)

    async def _announce(self, registration: Registration, *, op: str) -> None:
        async with self._registering:
            await self._put_service(registration, op=op)
            self._registered[registration.instance_id] = registration
        if self._reconciler is None or self._reconciler.done():
            self._reconciler = asyncio.create_task(self._reconcile_loop(), name="consul-reconcile")

    async def _reconcile_loop(self) -> None:
        while not self._closed and self._registered:
            await asyncio.sleep(self._reconcile_s)
            for registration in list(self._registered.values()):
                if self._closed:
                    return
                try:
                    await self.reconcile(registration)
                except ModelServeError as exc:  # agent away: look again next round
                    log.debug("reconcile %s: %s", registration.instance_id, exc.message)

    async def reconcile(self, registration: Registration) -> bool:
        """Register ``registration`` again if the agent lost it; True when it did."""
        path = "/v1/agent/service/" + quote(registration.instance_id, safe="")
        resp = await self._request("GET", path, op="look up registration", ok=(200, 404))
        if resp.status_code == 200:
            return False
        async with self._registering:
            # Deregistered (draining) or superseded while we looked: leave it be.
            if self._registered.get(registration.instance_id) is not registration:
                return False
            await self._put_service(registration, op="register again")
        self.reregistrations += 1
        log.warning(
            "Consul at %s had lost %s (agent restarted without its state?); registered again",
            self._display_addr,
            registration.instance_id,
        )
        return True

    async def resolve(self, service: str) -> list[Instance]:
        try:
            instances, _ = await self._health(service, index=None)
        except UnavailableError as exc:
            known = self._known.get(service)
            if not known:
                raise
            # Agent away (T32): the last-known set, rather than no instance at all.
            log.warning("resolve %s: %s; using the last-known %d", service, exc.message, len(known))
            return list(known)
        return instances

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        index = 0
        last: list[Instance] | None = None
        failures = 0
        hold_until = 0.0  # after an outage: removals wait until then (monotonic)
        bucket = _TokenBucket(_WATCH_BURST, _WATCH_REFILL_S)
        while not self._closed:
            await bucket.take()
            holding = hold_until - time.monotonic()
            try:
                # While holding, a shorter blocking query, so the held removals apply on time.
                wait_s = min(self._wait_s, holding) if holding > 0 else None
                instances, new_index = await self._health(service, index=index, wait_s=wait_s)
            except ModelServeError as exc:  # unreachable, 5xx, 403, 400: keep watching
                if self._closed:
                    return
                failures += 1
                delay = _backoff(failures)
                log.warning("watch %s: %s; retrying in %.2fs", service, exc.message, delay)
                await asyncio.sleep(delay)
                continue
            # Back after errors, or an index gone backwards (an agent restarted between two
            # queries, unseen): the agent may not know everything again yet.
            if (failures or new_index < index) and last and self._return_hold_s > 0:
                hold_until = time.monotonic() + self._return_hold_s
                log.warning(
                    "watch %s: Consul at %s answers again; removals held for %.0fs",
                    service,
                    self._display_addr,
                    self._return_hold_s,
                )
            failures = 0
            index = _next_index(index, new_index)
            shown = instances
            if last and time.monotonic() < hold_until:
                answered = {i.instance_id for i in instances}
                kept = [i for i in last if i.instance_id not in answered]
                if kept:
                    shown = sorted([*instances, *kept], key=lambda i: (i.instance_id, i.address))
            if shown != last:
                last = shown
                yield shown

    async def close(self) -> None:
        self._closed = True
        if self._reconciler is not None:
            self._reconciler.cancel()
            await asyncio.gather(self._reconciler, return_exceptions=True)
        await self._client.aclose()

    # -- HTTP -----------------------------------------------------------------------------

    def _service_body(self, reg: Registration) -> dict[str, Any]:
        if not reg.instance_id:
            raise ValueError("registration needs an instance_id (Consul's service ID)")
        if not reg.host or reg.host in ("0.0.0.0", "::", "[::]"):
            # The agent dials this for the check and clients dial it for traffic.
            raise ValueError(f"register a reachable host, not {reg.host!r}")
        if not 0 < reg.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {reg.port}")
        validate_meta(reg.meta)
        return {
            "ID": reg.instance_id,
            "Name": self._prefix + reg.service,
            "Address": reg.host,
            "Port": reg.port,
            "Tags": list(reg.tags),
            "Meta": dict(reg.meta),
            "Check": {
                "Name": f"gRPC health {_host_port(reg.host, reg.port)}",
                # No "/service" suffix: probe the server's overall health, the one our runtime
                # flips to NOT_SERVING while warming up and draining.
                "GRPC": _host_port(reg.host, reg.port),
                **_tls_check(reg),
                **self._check,
            },
        }

    async def _put_service(self, reg: Registration, *, op: str) -> None:
        body = self._service_body(reg)
        await self._request("PUT", "/v1/agent/service/register", op=op, json=body)

    async def _health(
        self, service: str, *, index: int | None, wait_s: float | None = None
    ) -> tuple[list[Instance], int]:
        params: dict[str, str] = {"passing": "true"}
        timeout = _REQUEST_TIMEOUT
        if index is not None:
            params["index"] = str(index)
            params["wait"] = self._wait if wait_s is None else format_duration(max(wait_s, 0.05))
            # Consul adds up to wait/16 of jitter before answering.
            wait = self._wait_s if wait_s is None else max(wait_s, 0.05)
            timeout = httpx.Timeout(wait * 17 / 16 + 5.0, connect=2.0)
        path = "/v1/health/service/" + quote(self._prefix + service, safe="")
        resp = await self._request(
            "GET", path, op=f"resolve {service}", params=params, timeout=timeout
        )
        if resp.headers.get("X-Consul-Results-Filtered-By-ACLs", "").lower() == "true":
            log.warning("Consul hid some %s instances: the token lacks service:read", service)
        try:
            payload = resp.json()
            new_index = int(resp.headers.get("X-Consul-Index", "0"))
        except ValueError as exc:
            raise UnavailableError(
                f"Consul at {self._display_addr} sent an unreadable answer"
            ) from exc
        instances = _instances(service, payload)
        self._known[service] = instances
        return instances, new_index

    async def _request(
        self,
        method: str,
        path: str,
        *,
        op: str,
        ok: tuple[int, ...] = (200,),
        params: Mapping[str, str] | None = None,
        json: Any = None,
        timeout: httpx.Timeout = _REQUEST_TIMEOUT,
    ) -> httpx.Response:
        if self._closed:
            raise UnavailableError(f"cannot {op}: Consul discovery is closed")
        try:
            resp = await self._client.request(
                method, path, params=params, json=json, timeout=timeout
            )
        except httpx.HTTPError as exc:
            detail = self._scrub(str(exc)) or "no detail"
            raise UnavailableError(
                f"cannot {op}: Consul at {self._display_addr} unreachable "
                f"({type(exc).__name__}: {detail})"
            ) from exc
        if resp.status_code in ok:
            return resp
        reason = self._scrub(resp.text.strip()[:300]) or resp.reason_phrase
        message = (
            f"cannot {op}: Consul at {self._display_addr} answered {resp.status_code}: {reason}"
        )
        if resp.status_code in (401, 403):
            raise PermissionDeniedError(message + " (check the ACL token)")
        if resp.status_code == 400:
            raise InvalidArgumentError(message)
        raise UnavailableError(message)

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "<token>") if self._token else text


def _tls_check(reg: Registration) -> dict[str, Any]:
    """How the agent's gRPC check reaches the listener: TLS, verifying its certificate (the
    agent needs the CA, and a client certificate when the listener requires one; both from
    the agent's own TLS configuration)."""
    if not reg.tls:
        return {"GRPCUseTLS": False}
    return {
        "GRPCUseTLS": True,
        "TLSSkipVerify": False,
        "TLSServerName": reg.tls_server_name or reg.host,
    }


def _instances(service: str, payload: Any) -> list[Instance]:
    if not isinstance(payload, list):
        raise UnavailableError(f"Consul's health answer for {service} is not a list")
    out: list[Instance] = []
    for entry in payload:
        if not isinstance(entry, dict):
            raise UnavailableError(f"Consul's health answer for {service} is malformed")
        svc = entry.get("Service") or {}
        node = entry.get("Node") or {}
        # An empty Service.Address means "the node's address" in Consul.
        host = svc.get("Address") or node.get("Address") or ""
        port = svc.get("Port")
        if not host or not isinstance(port, int) or not 0 < port < 65536:
            log.warning("skipping %s instance %r without address/port", service, svc.get("ID"))
            continue
        out.append(
            Instance(
                service=service,
                instance_id=str(svc.get("ID") or ""),
                address=_host_port(host, port),
                meta=dict(svc.get("Meta") or {}),
                tags=tuple(svc.get("Tags") or ()),
            )
        )
    # Consul's order is not stable across answers; sorting makes "changed" mean changed.
    out.sort(key=lambda i: (i.instance_id, i.address))
    return out


def _next_index(previous: int, returned: int) -> int:
    """The index for the next blocking query, per Consul's blocking-query rules."""
    # An index below 1 would make every query return at once (a busy loop); 1 always blocks.
    returned = max(returned, 1)
    # Gone backwards (snapshot restore, another agent): start over with a fresh read.
    return 0 if returned < previous else returned


def _backoff(failures: int) -> float:
    ceiling = min(_BACKOFF_MAX_S, _BACKOFF_INITIAL_S * 2 ** (failures - 1))
    # Half fixed, half random: spreads reconnecting watchers without ever spinning at ~0.
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class _TokenBucket:
    """Lets ``burst`` queries through at once, then one per ``refill_s`` seconds."""

    def __init__(self, burst: float, refill_s: float) -> None:
        self._burst = burst
        self._refill_s = refill_s
        self._tokens = burst
        self._stamp: float | None = None

    async def take(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._stamp is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) / self._refill_s)
        self._stamp = now
        if self._tokens < 1:
            await asyncio.sleep((1 - self._tokens) * self._refill_s)
            self._stamp = loop.time()
            self._tokens = 1
        self._tokens -= 1
