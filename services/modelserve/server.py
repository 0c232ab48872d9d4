"""The server bootstrap every service shares (CONVENTIONS.md habit 6).

``serve(spec, argv)`` loads settings, configures logs and traces, builds a grpc.aio server with
the interceptor chain, health (NOT_SERVING until the service says it is warm) and reflection,
starts the metrics port, registers in discovery, and on SIGTERM/SIGINT drains: health goes
NOT_SERVING, the instance deregisters, in-flight RPCs get ``shutdown_grace_seconds`` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from modelserve import metrics, tracing
from modelserve.admission import AdmissionInterceptor
from modelserve.auth.authenticator import Authenticator
from modelserve.auth.client import set_service_token_file
from modelserve.auth.interceptor import AuthInterceptor
from modelserve.auth.limits import IdentityLimits
from modelserve.channels import INTERNAL_MESSAGE_BYTES
from modelserve.discovery import Discovery, Registration
from modelserve.discovery.static import StaticDiscovery
from modelserve.interceptors import BehaviourInterceptor, ErrorInterceptor, WrappingRegistrar
from modelserve.logging import configure_logging
from modelserve.settings import CommonSettings, SettingsError, describe, load_settings
from modelserve.tls import ReloadingCertificate, TLSConfig, configure_client_tls, server_credentials

log = logging.getLogger(__name__)

S = TypeVar("S", bound=CommonSettings)

# Internal servers permit the pings internal clients send (RELIABILITY.md, keepalive A8).
# The C-core name of A8's "min recv ping interval" is grpc.http2.min_ping_interval_without_data_ms
# (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS); an unknown key is silently ignored,
# which left the 5-minute default, so 30 s client pings earned GOAWAY too_many_pings.
INTERNAL_SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_ping_strikes", 2),
]
# Gateway and workers: bounded connection age so clients rebalance after scale-out (A9).
CONNECTION_AGE_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_connection_idle_ms", 300_000),
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 30_000),
]


@dataclass(frozen=True)
class ServiceSpec(Generic[S]):
    """What ``serve`` needs to know about one service."""

    name: str
    settings_cls: type[S]
    build: Callable[[Runtime, S], Awaitable[None]]
    public: bool = False  # the public edge keeps gRPC's default keepalive policy
    connection_age_limited: bool = False


def dependency(service: str, default: Any, help: str) -> Any:
    """A settings field holding static addresses of another service (``<svc>_addr``)."""
    return dataclasses.field(
        default=default,
        metadata={"help": help, "env": (), "secret": False, "service": service},
    )


def dependency_addresses(settings: CommonSettings) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in dataclasses.fields(settings):
        svc = f.metadata.get("service")
        if svc:
            value = getattr(settings, f.name)
            addrs = value if isinstance(value, list) else [a.strip() for a in value.split(",")]
            out[svc] = [a for a in addrs if a]
    return out


def make_discovery(settings: CommonSettings) -> Discovery:
    if settings.discovery == "consul":
        from modelserve.discovery.consul import ConsulDiscovery

        return ConsulDiscovery(
            settings.consul_addr,
            settings.consul_token,
            reconcile_s=settings.consul_reconcile_seconds,
        )
    if settings.discovery == "dns":
        from modelserve.discovery.dns import DNSDiscovery

        return DNSDiscovery(
            dependency_addresses(settings),
            refresh_s=settings.dns_refresh_seconds,
            server=settings.dns_server,
        )
    return StaticDiscovery(dependency_addresses(settings))


class Listener(Protocol):
    """A server of another protocol in this process (see ``Runtime.add_listener``)."""

    @property
    def port(self) -> int: ...

    async def close(self, grace: float) -> None: ...


class Runtime:
    """The running process of one service: server, health, discovery, background tasks."""

    def __init__(
        self,
        spec: ServiceSpec[Any],
        settings: CommonSettings,
        discovery: Discovery,
        interceptors: Sequence[aio.ServerInterceptor],
        behaviours: Sequence[BehaviourInterceptor] = (),
    ) -> None:
        self.spec = spec
        # Wrapped around every handler at registration (add_service): no per-RPC interceptor
        # chain for them (modelserve.interceptors, WrappingRegistrar).
        self.behaviours = tuple(behaviours)
        self.settings = settings
        self.discovery = discovery
        receive, send = settings.max_receive_message_bytes, settings.max_send_message_bytes
        if not spec.public:
            # Internal hops take at least what internal channels send (64 MiB), so a request
            # the gateway accepted, plus whatever a hop adds to it, is never refused inside
            # (RELIABILITY.md: internal hops >= gateway; T07).
            receive, send = max(receive, INTERNAL_MESSAGE_BYTES), max(send, INTERNAL_MESSAGE_BYTES)
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", receive),
            ("grpc.max_send_message_length", send),
            ("grpc.so_reuseport", 0),
        ]
        if not spec.public:
            options += INTERNAL_SERVER_OPTIONS
        if spec.connection_age_limited:
            options += CONNECTION_AGE_OPTIONS
        self.server = aio.server(interceptors=list(interceptors) or None, options=options)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = [
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        ]
        self._drain_hooks: list[Callable[[], Awaitable[None]]] = []
        self._stop_hooks: list[Callable[[], Awaitable[None]]] = []
        self._before_stop_hooks: list[Callable[[], Awaitable[None]]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listeners: list[tuple[str, Callable[[], Awaitable[Listener]]]] = []
        self._started_listeners: list[Listener] = []
        # Ports of the extra listeners (e.g. "http"), written to the port file as <name>_port.
        self.ports: dict[str, int] = {}
        self.meta: dict[str, str] = {}
        self.port = 0
        self.metrics_port: int | None = None
        self.auth: Any = None  # the auth interceptor when auth is on (start_runtime sets it)
        self._metrics_server: Any = None
        self.registration: Registration | None = None
        self.stopping = asyncio.Event()
        self.tls = TLSConfig.from_settings(settings)
        self.certificates: ReloadingCertificate | None = None  # the listener's, when TLS is on
        self._serving = False
        self._started = False
        # Health names a service adds beyond its gRPC services (a worker's model names): each
        # is SERVING only while its flag is on and the process itself is serving.
        self._named: dict[str, bool] = {}

    # --- wiring, called from each service's build() ---
    def add_service(
        self, full_name: str, add_fn: Callable[[Any, aio.Server], None], servicer: Any
    ) -> None:
        registrar = WrappingRegistrar(self.server, self.behaviours)
        add_fn(servicer, registrar)  # stands in for the server
        registrar.finish()
        self._service_names.append(full_name)

    def add_listener(self, name: str, start: Callable[[], Awaitable[Listener]]) -> None:
        """Another protocol served by this process (the V2 REST face): ``start`` runs once
        the gRPC server listens and returns the listener; its port is ``ports[name]``. It is
        closed with the gRPC server, with the same grace."""
        self._listeners.append((name, start))

    def on_drain(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run when SIGTERM arrives, before the drain wait (e.g. tell routers we are leaving)."""
        self._drain_hooks.append(hook)

    def before_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run after the drain wait, right before the server stops: end long-lived streams
        (watches) here, or they would hold the stop for the whole grace period."""
        self._before_stop_hooks.append(hook)

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run after the server stopped (close stores, channels)."""
        self._stop_hooks.append(hook)

    def background(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A task that lives as long as the process; a crash is logged, never silent."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s failed", name, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    @property
    def serving(self) -> bool:
        return self._serving

    def serve_when(
        self, ready: asyncio.Event, then: Callable[[], None] | None = None
    ) -> asyncio.Task[Any]:
        """Report SERVING once ``ready`` is set (a service's replica of the registry synced),
        then call ``then``; until then health says NOT_SERVING."""

        async def wait() -> None:
            await ready.wait()
            await self.set_serving(True)
            if then is not None:
                then()

        return self.background(wait(), "readiness")

    async def set_serving(self, serving: bool) -> None:
        """Health for every service on this port: SERVING only once warm, never while stopping.

        Before ``start`` the wish is kept and applied once the server listens.
        """
        if self.stopping.is_set():
            return
        self._serving = serving
        if self._started:
            await self._apply_health()

    async def _apply_health(self) -> None:
        status = _status(self._serving)
        for name in ["", *self._service_names]:
            await self.health.set(name, status)
        await self._apply_named()
        metrics.READY.set(1 if self._serving else 0)

    def set_named_health(self, serving: Mapping[str, bool]) -> None:
        """Health names of this service's own (a worker's models, T26): ``serving[name]`` and
        the process serving give SERVING, else NOT_SERVING. A name once set stays known
        (NOT_SERVING when left out), so Check never flips to NOT_FOUND under a watcher.
        Applied in the background; every application writes the latest wish."""
        for name in self._named.keys() - serving.keys():
            self._named[name] = False
        self._named.update(serving)
        if self._started and not self.stopping.is_set():
            self.background(self._apply_named(), "named health")

    async def _apply_named(self) -> None:
        for name in list(self._named):
            await self.health.set(name, _status(self._serving and self._named.get(name, False)))

    async def update_meta(self, meta: Mapping[str, str]) -> None:
        self.meta = dict(meta)
        if self.registration is not None:
            self.registration = dataclasses.replace(self.registration, meta=self.meta)
            await self.discovery.update_meta(self.registration)

    # --- lifecycle, called by serve() ---
    async def start(self) -> None:
        s = self.settings
        if s.reflection_enabled:
            reflection.enable_server_reflection(
                [*self._service_names, reflection.SERVICE_NAME], self.server
            )
        bind = f"{s.host}:{s.port}"
        if self.tls.enabled:
            creds, self.certificates = server_credentials(self.tls)
            self.port = self.server.add_secure_port(bind, creds)
        else:
            self.port = self.server.add_insecure_port(bind)
        if self.port == 0:
            raise OSError(f"could not bind {s.host}:{s.port}")
        await self.server.start()
        for name, start_listener in self._listeners:
            listener = await start_listener()
            self._started_listeners.append(listener)
            self.ports[name] = listener.port
        self._started = True
        await self._apply_health()
        metrics_port = s.resolved_metrics_port(self.port)
        if metrics_port is not None:
            self._metrics_server, self.metrics_port = metrics.start_metrics_server(
                s.metrics_host, metrics_port, self.tls
            )
        host = s.advertise_host or (s.host if s.host not in ("0.0.0.0", "::", "") else "127.0.0.1")
        if s.discovery == "consul" and not s.advertise_host and s.host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        self.registration = Registration(
            service=self.spec.name,
            instance_id=s.instance_id or f"{self.spec.name}-{host}-{self.port}",
            host=host,
            port=self.port,
            meta=self.meta,
            tls=self.tls.enabled,
            tls_server_name=self.tls.server_name,
        )
        await self.discovery.register(self.registration)
        if s.port_file:
            _write_port_file(
                Path(s.port_file), self.spec.name, self.port, self.metrics_port, self.ports
            )
        log.info(
            "%s listening on %s:%d (%s)",
            self.spec.name,
            s.host,
            self.port,
            _describe_tls(self.tls),
        )
        for name, port in self.ports.items():
            log.info("%s %s listening on %s:%d", self.spec.name, name, s.host, port)

    async def shutdown(self) -> None:
        """Drain, then stop: NOT_SERVING, deregister, wait, stop with grace, run stop hooks."""
        s = self.settings
        log.info("%s draining", self.spec.name)
        self.stopping.set()
        self._serving = False
        await self.health.enter_graceful_shutdown()
        metrics.READY.set(0)
        for hook in self._drain_hooks:
            with contextlib.suppress(Exception):
                await hook()
        if self.registration is not None:
            try:
                await self.discovery.deregister(self.registration)
            except Exception:
                log.warning("deregistration failed", exc_info=True)
        await asyncio.sleep(s.resolved_drain_seconds())
        for hook in self._before_stop_hooks:
            with contextlib.suppress(Exception):
                await hook()
        await asyncio.gather(
            self.server.stop(s.shutdown_grace_seconds),
            *(listener.close(s.shutdown_grace_seconds) for listener in self._started_listeners),
        )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for hook in self._stop_hooks:
            try:
                await hook()
            except Exception:
                log.warning("stop hook failed", exc_info=True)
        await self.discovery.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        log.info("%s stopped", self.spec.name)


def _status(serving: bool) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    if serving:
        return health_pb2.HealthCheckResponse.SERVING
    return health_pb2.HealthCheckResponse.NOT_SERVING


def _describe_tls(tls: TLSConfig) -> str:
    if not tls.enabled:
        return "plaintext"
    return "TLS, client certificate " + ("required" if tls.require_client_cert else "not required")


def _write_port_file(
    path: Path,
    service: str,
    port: int,
    metrics_port: int | None,
    ports: Mapping[str, int] | None = None,
) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    payload: dict[str, Any] = {
        "service": service,
        "port": port,
        "metrics_port": metrics_port,
        "pid": os.getpid(),
    }
    payload.update({f"{name}_port": p for name, p in (ports or {}).items()})
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)  # readers never see a half-written file


def auth_interceptor(settings: CommonSettings) -> AuthInterceptor | None:
    """The auth interceptor ``settings`` ask for (None when auth is off)."""
    if not settings.auth:
        return None
    if not settings.service_token_file and not settings.tls_service_sans:
        log.warning("auth is on but service_token_file is unset: calls to other services fail")
    limits = IdentityLimits(
        max_streams=settings.max_streams_per_identity,
        rate_per_s=settings.identity_rate_limit,
        burst=settings.identity_rate_burst,
        max_concurrent=settings.identity_max_concurrent,
    )
    authenticator = Authenticator.from_settings(settings)
    try:
        authenticator.check_files()  # fail at start, not on every call
    except (OSError, ValueError) as exc:
        raise SettingsError(f"auth credentials cannot be loaded: {exc}") from None
    return AuthInterceptor(authenticator, limits)


async def start_runtime(spec: ServiceSpec[S], settings: S, *, traced: bool = False) -> Runtime:
    """Build and start one service in this event loop (``run_service`` and in-process tests)."""
    # Behaviours wrapped around every handler, outermost first. Admission before the rest: a
    # refused call costs no decoding beyond gRPC's own. RED metrics before admission: a
    # refused call is counted with its status too.
    behaviours: list[BehaviourInterceptor] = [
        AdmissionInterceptor(
            max_unary=settings.max_concurrent_rpcs, max_streams=settings.max_concurrent_streams
        ),
    ]
    if settings.rpc_metrics:
        behaviours.insert(0, metrics.RpcMetricsInterceptor(spec.name))
    # Then who is calling: every RPC but health and reflection needs its role (auth/roles.py).
    auth = auth_interceptor(settings)
    if auth is not None:
        behaviours.append(auth)
    # Every internal channel this service opens from here on sends the service token.
    set_service_token_file(settings.service_token_file)
    # SERVER spans inside auth (a refused call costs no span), around the error mapping (the
    # span sees the status the caller gets): tracing.ServerSpans, only when tracing is on.
    if traced:
        behaviours.append(tracing.ServerSpans())
    behaviours.append(ErrorInterceptor())
    interceptors: list[aio.ServerInterceptor] = []
    # Every internal channel this process opens (channels.internal_channel) uses mTLS when
    # its listener uses TLS: the service's own certificate is its client certificate.
    configure_client_tls(TLSConfig.from_settings(settings).client())
    runtime = Runtime(spec, settings, make_discovery(settings), interceptors, behaviours)
    runtime.auth = auth  # faces that are not gRPC (the REST face) enforce the same rules
    await spec.build(runtime, settings)
    await runtime.start()
    return runtime


async def run_service(spec: ServiceSpec[S], settings: S) -> None:
    """Run one service until SIGTERM/SIGINT, then drain and stop."""
    traced = tracing.configure_tracing(
        settings.service_name or f"modelserve-{spec.name}",
        settings.trace_exporter,
        sample_ratio=settings.trace_sample_ratio,
        otlp_endpoint=settings.otlp_endpoint,
        sampler=settings.trace_sampler,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runtime = await start_runtime(spec, settings, traced=traced)
    await stop.wait()
    await runtime.shutdown()
    tracing.shutdown_tracing()


def serve(
    spec: ServiceSpec[S], argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> None:
    """Entry point of ``python -m <service>`` and ``modelserve serve <service>``."""
    settings = load_settings(spec.settings_cls, argv, env)
    configure_logging(spec.name, settings.log_level, settings.log_format)
    log.info("starting %s with %s", spec.name, json.dumps(describe(settings), default=str))
    try:
        import uvloop

        uvloop.run(run_service(spec, settings))
    except ImportError:  # uvloop is optional on platforms without wheels
        asyncio.run(run_service(spec, settings))
