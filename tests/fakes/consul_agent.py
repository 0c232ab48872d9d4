"""An in-process stand-in for a Consul agent's HTTP API, for tests (Consul is not installable).

It serves only what ``modelserve.discovery.consul`` uses, with Consul's JSON shapes and rules:

- ``PUT /v1/agent/service/register``: validates like the agent (Name required, Consul's meta
  limits, Go durations) and is an upsert that keeps the check's current status (agent.go
  "snapshot the current state of the health check to avoid potential flapping"). Stricter than
  Consul on purpose: unknown field names get 400, where Consul would silently ignore a typo.
- ``PUT /v1/agent/service/deregister/:id``: 404 "Unknown service ID" when absent (Consul >= 1.9).
- ``GET /v1/agent/service/:id``: the service's definition, 404 when the agent does not know it.
- ``GET /v1/health/service/:name``: Node/Service/Checks entries, ``passing`` filter, and blocking
  queries: ``index`` + ``wait`` (default 5m, max 10m, plus up to wait/16 jitter), holding until
  the index moves past ``index``; ``X-Consul-Index`` on every answer.
- One raft-like index for everything, bumped only by real changes: a register that changes
  nothing, or a check run that keeps its status, leaves it alone (as Consul's state store does).
- ACLs: with ``acl_token`` set, writes need it (403 "Permission denied" without a token, 403
  "ACL not found" for a wrong one); reads with a wrong token get 403, reads without one are
  filtered to nothing with ``X-Consul-Results-Filtered-By-ACLs: true``, as Consul's anonymous
  token does under default-deny. Tokens come from X-Consul-Token, ``Authorization: Bearer`` or
  ``?token=``.
- gRPC checks really run: grpc.health.v1 ``Check`` against ``GRPC`` ("host:port[/service]")
  on a fresh channel each time, first run after a random stagger within the interval, then every
  interval, with Consul's StatusHandler counting (the first result applies at once, later
  transitions need SuccessBeforePassing / FailuresBeforeCritical in a row; FailuresBeforeWarning
  defaults to FailuresBeforeCritical). New checks start critical.
- The reaper: services whose check stays critical longer than DeregisterCriticalServiceAfter
  are removed, checked every ``reap_interval_s``.

Consul's floors (1s check interval, 1m deregister-after, 30s reaper) are the defaults here;
tests lower them through the constructor so they run in milliseconds.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE_FIELDS = {
    "ID", "Name", "Tags", "Address", "TaggedAddresses", "Meta", "Port", "Kind", "Proxy",
    "Connect", "Check", "Checks", "EnableTagOverride", "Weights", "Namespace", "Partition",
    "SocketPath", "Locality",
}  # fmt: skip
CHECK_FIELDS = {
    "CheckID", "ID", "Name", "Status", "Notes", "ServiceID", "Args", "ScriptArgs", "HTTP",
    "Header", "Method", "Body", "DisableRedirects", "TCP", "TCPUseTLS", "UDP", "Interval",
    "Timeout", "TTL", "GRPC", "GRPCUseTLS", "TLSServerName", "TLSSkipVerify", "AliasNode",
    "AliasService", "DockerContainerID", "Shell", "H2PING", "H2PingUseTLS", "OSService",
    "DeregisterCriticalServiceAfter", "SuccessBeforePassing", "FailuresBeforeWarning",
    "FailuresBeforeCritical", "OutputMaxSize",
}  # fmt: skip
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")


class ConsulError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def go_duration(value: Any, what: str) -> float:
    """Seconds in a Go duration string, or 400 like Consul's decoder."""
    if isinstance(value, str) and value.strip() == "0":
        return 0.0
    text = value.strip() if isinstance(value, str) else ""
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total, pos = total + float(m.group(1)) * _UNITS[m.group(2)], m.end()
    if not text or pos != len(text):
        raise ConsulError(400, f"Request decode failed: {what}: invalid duration {value!r}")
    return total


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any  # decoded JSON, or None


@dataclass
class _Check:
    check_id: str
    name: str
    definition: dict[str, Any]
    status: str = "critical"
    output: str = ""
    critical_since: float | None = None
    task: asyncio.Task[None] | None = None


@dataclass
class _Service:
    definition: dict[str, Any]
    check: _Check | None
    create_index: int
    modify_index: int


class FakeConsulAgent:
    def __init__(
        self,
        *,
        acl_token: str = "",
        node: str = "fake-node",
        node_address: str = "127.0.0.1",
        min_check_interval_s: float = 1.0,
        min_deregister_after_s: float = 60.0,
        reap_interval_s: float = 30.0,
        tls_ca_file: str = "",
        tls_cert_file: str = "",
        tls_key_file: str = "",
    ) -> None:
        # The agent's own TLS configuration (Consul's tls.grpc / tls.defaults ca_file,
        # cert_file, key_file): what its GRPCUseTLS checks verify with and show.
        self.tls_ca_file = tls_ca_file
        self.tls_cert_file = tls_cert_file
        self.tls_key_file = tls_key_file
        self.acl_token = acl_token
        self.node = node
        self.node_address = node_address
        self.min_check_interval_s = min_check_interval_s
        self.min_deregister_after_s = min_deregister_after_s
        self.reap_interval_s = reap_interval_s
        self.requests: list[RecordedRequest] = []
        self.services: dict[str, _Service] = {}
        self.index = 1
        self.force_index_header: int | None = None  # simulate Consul's "index 0" bug
        self._fail: list[int] = []
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._on_conn, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ensure_reaper()

    async def start_unix(self, path: str) -> None:
        self._server = await asyncio.start_unix_server(self._on_conn, path)
        self._ensure_reaper()

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Stop listening and drop open connections; services and checks live on."""
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def close(self) -> None:
        await self.stop()
        tasks = [s.check.task for s in self.services.values() if s.check and s.check.task]
        if self._reaper:
            tasks.append(self._reaper)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- test controls --------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` requests with ``status`` (an agent losing its servers)."""
        self._fail.extend([status] * count)

    def wipe(self) -> None:
        """Forget every service and check, as an agent restarted without its data dir does."""
        for svc in self.services.values():
            if svc.check and svc.check.task:
                svc.check.task.cancel()
        self.services.clear()
        self._bump()

    def restore_index(self, index: int) -> None:
        """Make the index go backwards, as a raft snapshot restore does."""
        self.index = index

    def check_status(self, service_id: str) -> str | None:
        svc = self.services.get(service_id)
        return svc.check.status if svc and svc.check else None

    def _bump(self) -> int:
        self.index += 1
        self._changed.set()
        self._changed = asyncio.Event()
        return self.index

    # -- HTTP -----------------------------------------------------------------------------

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            while await self._serve_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        line = await reader.readline()
        if not line:
            return False
        method, target, _ = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        headers: dict[str, str] = {}
        while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
        url = urlsplit(target)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        try:
            decoded = json.loads(body) if body else None
        except ValueError:
            decoded = body.decode("latin-1")
        req = RecordedRequest(method, unquote(url.path), query, headers, decoded)
        self.requests.append(req)
        status, extra, payload = await self._dispatch(req)
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        ctype = "text/plain; charset=utf-8" if isinstance(payload, str) else "application/json"
        head = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(data)}",
        ]
        head += [f"{k}: {v}" for k, v in extra.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await writer.drain()
        return headers.get("connection", "").lower() != "close"

    async def _dispatch(self, req: RecordedRequest) -> tuple[int, dict[str, str], Any]:
        if self._fail:
            return self._fail.pop(0), {}, "rpc error: injected failure"
        try:
            if req.path == "/v1/agent/service/register":
                self._need(req, "PUT")
                self._authorize(req, write=True)
                return 200, {}, self._register(req.body)
            if req.path.startswith("/v1/agent/service/deregister/"):
                self._need(req, "PUT")
                self._authorize(req, write=True)
                return 200, {}, self._deregister(req.path.rsplit("/", 1)[1])
            if req.path.startswith("/v1/agent/service/"):
                self._need(req, "GET")
                self._authorize(req, write=False)
                sid = req.path.rsplit("/", 1)[1]
                if sid not in self.services:
                    return 404, {}, f'unknown service ID "{sid}"'
                return 200, {}, self.services[sid].definition
            if req.path.startswith("/v1/health/service/"):
                self._need(req, "GET")
                anonymous = self._authorize(req, write=False)
                return await self._health(req, req.path.rsplit("/", 1)[1], anonymous)
            return 404, {}, "Invalid URL path: not a recognized HTTP API endpoint"
        except ConsulError as exc:
            return exc.status, {}, exc.text

    @staticmethod
    def _need(req: RecordedRequest, method: str) -> None:
        if req.method != method:
            raise ConsulError(405, f"method {req.method} not allowed")

    def _authorize(self, req: RecordedRequest, *, write: bool) -> bool:
        """True when the caller is the anonymous token (reads get filtered)."""
        if not self.acl_token:
            return False
        bearer = req.headers.get("authorization", "")
        token = (
            req.headers.get("x-consul-token")
            or (bearer[7:] if bearer.lower().startswith("bearer ") else "")
            or req.query.get("token", "")
        )
        if token and token != self.acl_token:
            raise ConsulError(403, "ACL not found")
        if not token and write:
            raise ConsulError(403, "Permission denied: anonymous token lacks permission")
        return not token

    # -- endpoints ------------------------------------------------------------------------

    def _register(self, body: Any) -> str:
        if not isinstance(body, dict):
            raise ConsulError(400, "Request decode failed: body must be a JSON object")
        unknown = set(body) - SERVICE_FIELDS
        if unknown:
            raise ConsulError(400, f"Request decode failed: unknown fields {sorted(unknown)}")
        name = body.get("Name")
        if not isinstance(name, str) or not name:
            raise ConsulError(400, "Missing service name")
        sid = body.get("ID") or name
        meta = body.get("Meta") or {}
        self._validate_meta(meta)
        definition = {k: v for k, v in body.items() if k not in ("Check", "Checks")}
        definition["ID"] = sid
        check_body = body.get("Check")
        if body.get("Checks"):
            raise ConsulError(400, "fake agent: use Check, not Checks")
        existing = self.services.get(sid)
        check = self._make_check(sid, name, check_body) if check_body else None
        if existing is not None:
            if existing.check and existing.check.task:
                existing.check.task.cancel()
            if check and existing.check and existing.check.check_id == check.check_id:
                # Consul keeps the status across a re-register to avoid flapping.
                check.status, check.output = existing.check.status, existing.check.output
                check.critical_since = existing.check.critical_since
            same = existing.definition == definition and _check_view(existing.check) == _check_view(
                check
            )
            existing.definition, existing.check = definition, check
            if not same:
                existing.modify_index = self._bump()
        else:
            idx = self._bump()
            self.services[sid] = _Service(definition, check, idx, idx)
        if check is not None:
            check.task = asyncio.create_task(self._run_check(check))
        return ""

    def _make_check(self, sid: str, name: str, body: Any) -> _Check:
        if not isinstance(body, dict):
            raise ConsulError(400, "Request decode failed: Check must be an object")
        unknown = set(body) - CHECK_FIELDS
        if unknown:
            raise ConsulError(400, f"Request decode failed: unknown check fields {sorted(unknown)}")
        if not body.get("GRPC"):
            raise ConsulError(400, "fake agent runs gRPC checks only")
        for key in ("Interval", "Timeout", "DeregisterCriticalServiceAfter"):
            if key in body:
                go_duration(body[key], key)
        if go_duration(body.get("Interval", "0"), "Interval") <= 0:
            raise ConsulError(400, "Invalid check: Interval must be > 0 for a gRPC check")
        for key in ("SuccessBeforePassing", "FailuresBeforeCritical", "FailuresBeforeWarning"):
            if not isinstance(body.get(key, 0), int) or body.get(key, 0) < 0:
                raise ConsulError(400, f"Invalid check: {key} must be a non-negative integer")
        status = body.get("Status") or "critical"
        loop = asyncio.get_running_loop()
        return _Check(
            check_id=body.get("CheckID") or body.get("ID") or f"service:{sid}",
            name=body.get("Name") or f"Service '{name}' check",
            definition=copy.deepcopy(body),
            status=status,
            critical_since=loop.time() if status == "critical" else None,
        )

    @staticmethod
    def _validate_meta(meta: Any) -> None:
        if not isinstance(meta, dict):
            raise ConsulError(400, "Request decode failed: Meta must be an object")
        if len(meta) > 64:
            raise ConsulError(
                400,
                "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs",
            )
        for key, value in meta.items():
            problem = (
                "Key cannot be blank" if not key
                else "Key contains invalid characters" if not _META_KEY.match(key)
                else "Key is too long (limit: 128 characters)" if len(key) > 128
                else 'Key prefix "consul-" is reserved for internal use'
                if key.startswith("consul-")
                else "Value is too long (limit: 512 characters)" if len(str(value).encode()) > 512
                else ""
            )  # fmt: skip
            if problem:
                raise ConsulError(
                    400,
                    "Invalid Service Meta: Couldn't load metadata pair "
                    f"('{key}', '{value}'): {problem}",
                )

    def _deregister(self, sid: str) -> str:
        svc = self.services.pop(sid, None)
        if svc is None:
            raise ConsulError(
                404,
                f'Unknown service ID "{sid}". '
                "Ensure that the service ID is passed, not the service name.",
            )
        if svc.check and svc.check.task:
            svc.check.task.cancel()
        self._bump()
        return ""

    async def _health(
        self, req: RecordedRequest, name: str, anonymous: bool
    ) -> tuple[int, dict[str, str], Any]:
        passing = _bool_param(req.query, "passing")
        if "index" in req.query:
            try:
                min_index = int(req.query["index"])
            except ValueError:
                raise ConsulError(400, "Invalid index") from None
            wait = go_duration(req.query["wait"], "wait") if "wait" in req.query else 300.0
            wait = min(wait, 600.0) if wait > 0 else 300.0
            deadline = asyncio.get_running_loop().time() + wait + random.uniform(0, wait / 16)
            while min_index > 0 and self.index <= min_index:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    break
        entries = [self._entry(s) for s in self.services.values() if s.definition["Name"] == name]
        if passing:
            entries = [e for e in entries if all(c["Status"] == "passing" for c in e["Checks"])]
        headers = {
            "X-Consul-Index": str(
                self.force_index_header if self.force_index_header is not None else self.index
            )
        }
        if anonymous and entries:
            entries, headers["X-Consul-Results-Filtered-By-ACLs"] = [], "true"
        return 200, headers, entries

    def _entry(self, svc: _Service) -> dict[str, Any]:
        d = svc.definition
        tags = list(d.get("Tags") or [])
        checks = [_check_json(svc.check, self.node, d, tags)] if svc.check else []
        checks.append({
            "Node": self.node, "CheckID": "serfHealth", "Name": "Serf Health Status",
            "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
            "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "",
            "CreateIndex": 1, "ModifyIndex": 1,
        })  # fmt: skip
        return {
            "Node": {
                "ID": "40e4a748-2192-161a-0510-9bf59fe950b5", "Node": self.node,
                "Address": self.node_address, "Datacenter": "dc1",
                "TaggedAddresses": {"lan": self.node_address, "wan": self.node_address},
                "Meta": {"consul-network-segment": ""}, "CreateIndex": 1, "ModifyIndex": 1,
            },
            "Service": {
                "ID": d["ID"], "Service": d["Name"], "Tags": tags,
                "Address": d.get("Address", ""), "TaggedAddresses": d.get("TaggedAddresses"),
                "Meta": d.get("Meta") or {}, "Port": d.get("Port", 0),
                "Weights": d.get("Weights") or {"Passing": 1, "Warning": 1},
                "EnableTagOverride": bool(d.get("EnableTagOverride", False)),
                "CreateIndex": svc.create_index, "ModifyIndex": svc.modify_index,
            },
            "Checks": checks,
        }  # fmt: skip

    # -- checks ---------------------------------------------------------------------------

    async def _run_check(self, check: _Check) -> None:
        d = check.definition
        interval = max(go_duration(d["Interval"], "Interval"), self.min_check_interval_s)
        timeout = go_duration(d["Timeout"], "Timeout") if d.get("Timeout") else 10.0
        need_ok = int(d.get("SuccessBeforePassing", 0))
        need_crit = int(d.get("FailuresBeforeCritical", 0))
        need_warn = int(d.get("FailuresBeforeWarning", 0)) or need_crit
        # Consul's StatusHandler starts its counters at the thresholds: the first result counts.
        ok_count, fail_count = need_ok, need_crit
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            passed, output = await _grpc_probe(d["GRPC"], self._check_tls(d), timeout)
            if passed:
                ok_count, fail_count = ok_count + 1, 0
                if ok_count >= need_ok:
                    self._set_status(check, "passing", output)
            else:
                fail_count, ok_count = fail_count + 1, 0
                if fail_count >= need_crit:
                    self._set_status(check, "critical", output)
                elif fail_count >= need_warn:
                    self._set_status(check, "warning", output)
            await asyncio.sleep(interval)

    def _check_tls(self, d: dict[str, Any]) -> _ProbeTLS | None:
        if not d.get("GRPCUseTLS"):
            return None
        return _ProbeTLS(
            ca=_read(self.tls_ca_file),
            cert=_read(self.tls_cert_file),
            key=_read(self.tls_key_file),
            server_name=str(d.get("TLSServerName", "")),
            skip_verify=bool(d.get("TLSSkipVerify", False)),
        )

    def _set_status(self, check: _Check, status: str, output: str) -> None:
        check.output = output  # output-only changes sync lazily in Consul: no index bump
        if check.status != status:
            check.status = status
            now = asyncio.get_running_loop().time()
            check.critical_since = now if status == "critical" else None
            self._bump()

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap_loop())

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval_s)
            now = asyncio.get_running_loop().time()
            for sid, svc in list(self.services.items()):
                chk = svc.check
                after = chk.definition.get("DeregisterCriticalServiceAfter") if chk else None
                if not chk or not after or chk.critical_since is None:
                    continue
                limit = max(
                    go_duration(after, "DeregisterCriticalServiceAfter"),
                    self.min_deregister_after_s,
                )
                if now - chk.critical_since > limit:
                    self._deregister(sid)


@dataclass(frozen=True)
class _ProbeTLS:
    ca: bytes | None
    cert: bytes | None
    key: bytes | None
    server_name: str
    skip_verify: bool


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


async def _grpc_probe(target: str, tls: _ProbeTLS | None, timeout: float) -> tuple[bool, str]:
    server, _, service = target.partition("/")
    if tls is None:
        channel = grpc.aio.insecure_channel(server)
    else:
        if tls.skip_verify:  # gRPC Python cannot skip verification; no test needs it
            return False, "TLSSkipVerify is not supported by the stand-in"
        creds = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
        options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
        channel = grpc.aio.secure_channel(server, creds, options=options)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return False, f"rpc error: code = {exc.code().name} desc = {exc.details()}"
    finally:
        await channel.close()
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return False, f"gRPC {target} serving status: {status}"
    return True, f"gRPC check {target}: success"


def _check_json(check: _Check, node: str, svc: dict[str, Any], tags: list[str]) -> dict[str, Any]:
    d = check.definition
    return {
        "Node": node, "CheckID": check.check_id, "Name": check.name, "Status": check.status,
        "Notes": d.get("Notes", ""), "Output": check.output,
        "ServiceID": svc["ID"], "ServiceName": svc["Name"], "ServiceTags": tags, "Type": "grpc",
        "Definition": {
            "Interval": d.get("Interval", "0s"),
            "Timeout": d.get("Timeout", "0s"),
            "DeregisterCriticalServiceAfter": d.get("DeregisterCriticalServiceAfter", "0s"),
            "GRPC": d.get("GRPC", ""),
            "GRPCUseTLS": bool(d.get("GRPCUseTLS", False)),
            "TLSServerName": d.get("TLSServerName", ""),
            "TLSSkipVerify": bool(d.get("TLSSkipVerify", False)),
        },
        "CreateIndex": 0, "ModifyIndex": 0,
    }  # fmt: skip


def _check_view(check: _Check | None) -> Any:
    return None if check is None else (check.check_id, check.name, check.definition)


def _bool_param(query: dict[str, str], name: str) -> bool:
    if name not in query:
        return False
    value = query[name].lower()
    if value in ("", "true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ConsulError(400, f"Invalid value for ?{name}")
