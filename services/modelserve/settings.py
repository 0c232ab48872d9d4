"""Typed settings from flags and ``MODELSERVE_*`` environment variables.

Each service declares a dataclass subclassing ``CommonSettings``; every field has a ``help``
(the docs table is generated from them, see ``settings_table``). Precedence: flag > environment >
default. Where the ecosystem has its own variable (CONSUL_HTTP_ADDR, OTEL_*), a field names it in
``env`` and that variable is honoured after the MODELSERVE_ one. Loaders take an env mapping so
tests never patch ``os.environ``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from modelserve.tls import TLSConfig

log = logging.getLogger(__name__)

ENV_PREFIX = "MODELSERVE_"
MIB = 1024 * 1024

# Settings the registry and the worker both declare (artifacts by reference, artifact_uris).
ARTIFACT_FETCH_TIMEOUT_HELP = (
    60.0,
    "Artifacts by reference: how long connecting to the artifact's URI, or any one read from "
    "it, may stall before the fetch fails (not a bound on the whole transfer).",
)
S3_ENDPOINT_HELP = (
    "",
    "Artifacts by reference: the S3-compatible endpoint for s3:// URIs (e.g. "
    "http://minio:9000); empty = AWS S3. Credentials come from the standard AWS chain "
    "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance role). Needs the `s3` "
    "extra.",
)


def setting(default: Any, help: str, *, env: Sequence[str] = (), secret: bool = False) -> Any:
    """Declare a settings field: its default, a one-line help, extra env names to honour."""
    return field(default=default, metadata={"help": help, "env": tuple(env), "secret": secret})


@dataclass
class CommonSettings:
    """Settings every service shares."""

    host: str = setting("127.0.0.1", "Interface the gRPC server binds (0.0.0.0 in containers).")
    port: int = setting(0, "gRPC port; 0 picks a free one (tests).")
    metrics_port: int = setting(
        -1,
        "Prometheus metrics HTTP port; -1 = gRPC port + 1 (0 when the gRPC port is 0); -2 = off.",
    )
    rpc_metrics: bool = setting(
        True,
        "Count every RPC (requests by status, duration, in flight) in one interceptor; off "
        "saves its few microseconds per call (bench/reference.py measures what it costs).",
    )
    metrics_host: str = setting("127.0.0.1", "Interface the metrics HTTP server binds.")
    port_file: str = setting(
        "", "Write the bound ports as JSON to this file once listening (used by `up` and tests)."
    )
    advertise_host: str = setting(
        "", "Host other services use to reach this one (default: host, or 127.0.0.1 for 0.0.0.0)."
    )
    instance_id: str = setting(
        "", "Unique id of this instance in discovery (default: name-host-port)."
    )
    discovery: str = setting(
        "static",
        "Discovery backend: static, consul, or dns (the A/AAAA records of each <svc>_addr "
        "name:port, e.g. a Kubernetes headless Service; one instance per record).",
    )
    dns_refresh_seconds: float = setting(
        5.0,
        "With dns discovery: seconds between re-resolutions of every name (earlier, at most "
        "every 0.5 s, after a caller reports an address failing).",
    )
    dns_server: str = setting(
        "",
        "With dns discovery: query this DNS server (ip or ip:port) directly instead of the "
        "system resolver (getaddrinfo: /etc/hosts, resolv.conf).",
    )
    consul_addr: str = setting(
        "http://127.0.0.1:8500", "Consul agent HTTP address.", env=("CONSUL_HTTP_ADDR",)
    )
    consul_token: str = setting("", "Consul ACL token.", env=("CONSUL_HTTP_TOKEN",), secret=True)
    consul_reconcile_seconds: float = setting(
        10.0,
        "With consul discovery: how often this process checks that the agent still has its "
        "registration, and registers again if not (an agent restarted without its state).",
    )
    trace_exporter: str = setting(
        "none", "Trace exporter: none, console or otlp.", env=("OTEL_TRACES_EXPORTER",)
    )
    otlp_endpoint: str = setting(
        "",
        "OTLP/gRPC collector endpoint; http://host:port for a plaintext collector (without a "
        "scheme the exporter uses TLS).",
        env=("OTEL_EXPORTER_OTLP_ENDPOINT",),
    )
    service_name: str = setting(
        "", "Service name in traces (default modelserve-<service>).", env=("OTEL_SERVICE_NAME",)
    )
    trace_sample_ratio: float = setting(
        1.0, "Head sampling ratio for new traces (0..1).", env=("OTEL_TRACES_SAMPLER_ARG",)
    )
    trace_sampler: str = setting(
        "",
        "OpenTelemetry sampler name (always_on, always_off, traceidratio, "
        "parentbased_traceidratio, ...; its argument is trace_sample_ratio); "
        "empty = parentbased_traceidratio.",
        env=("OTEL_TRACES_SAMPLER",),
    )
    log_level: str = setting("INFO", "Log level.")
    log_format: str = setting("text", "Log format: text or json.")
    max_receive_message_bytes: int = setting(
        16 * MIB,
        "Largest gRPC message accepted. Internal services (registry, featurestore, router, "
        "worker) accept at least 64 MiB whatever this says, so nothing the gateway accepts is "
        "refused behind it.",
    )
    max_send_message_bytes: int = setting(
        16 * MIB, "Largest gRPC message sent (internal services: at least 64 MiB)."
    )
    reflection_enabled: bool = setting(True, "Serve gRPC server reflection (grpcurl list).")
    max_concurrent_rpcs: int = setting(
        1024,
        "Most unary RPCs served at once; more are refused RESOURCE_EXHAUSTED with "
        "grpc-retry-pushback-ms. Health and reflection are never counted or refused.",
    )
    max_concurrent_streams: int = setting(
        1024,
        "Most streaming RPCs open at once (watches, status streams, ModelStreamInfer), "
        "counted apart from unary RPCs so open streams never take their budget.",
    )
    stream_idle_timeout_seconds: float = setting(
        300.0, "A ModelStreamInfer stream that sends no request for this long is ended (OK)."
    )
    drain_seconds: float = setting(
        -1.0,
        "After SIGTERM, seconds NOT_SERVING before the server stops taking RPCs; "
        "-1 = 11 with consul (check interval x failures + 1), 2 x dns_refresh_seconds + 1 "
        "with dns (cluster DNS TTL + our refresh), 0.2 with static.",
    )
    shutdown_grace_seconds: float = setting(30.0, "Grace for in-flight RPCs when stopping.")
    tls_cert_file: str = setting(
        "",
        "PEM certificate (chain) this service serves and shows as its client certificate to "
        "the services it calls; set = TLS on the gRPC and metrics listeners and mTLS on outbound "
        "channels. "
        "Re-read when the file changes (new connections get it, no restart). Empty = plaintext.",
    )
    tls_key_file: str = setting("", "PEM private key of tls_cert_file.")
    tls_ca_file: str = setting(
        "",
        "PEM CA bundle that verifies client certificates shown to this service and the server "
        "certificates of the services it calls (empty: the system roots, for outbound only).",
    )
    tls_require_client_cert: bool = setting(
        True,
        "With TLS on, refuse callers without a client certificate issued by tls_ca_file (mTLS).",
    )
    tls_server_name: str = setting(
        "",
        "Name checked in the server certificates of the services this one calls, and the "
        "TLSServerName of its Consul check (empty: the host dialled).",
    )
    tls_service_sans: str = setting(
        "",
        "With auth and mTLS: comma-separated names (globs) of peer certificates that are service "
        "identities (role service) when the call carries no token, so internal hops need no "
        "service token. Matched against the certificate's SANs (its CN only when it has none).",
    )
    tls_admin_sans: str = setting(
        "",
        "With auth: comma-separated names (globs) of the client certificates the admin plane "
        "accepts; set = an RPC that needs role admin is PERMISSION_DENIED unless the caller's "
        "verified certificate has one of them, whatever its token (service identities "
        "excepted). Empty = not checked.",
    )
    auth: bool = setting(
        False,
        "Require 'authorization: Bearer <token>' on every RPC (health and reflection "
        "excepted) and enforce the RPC role table (README 'Security').",
    )
    auth_keys_file: str = setting(
        "",
        "API keys file (JSON: id, sha256 hash, roles, optional model globs); reloaded on change.",
    )
    auth_jwt_key_file: str = setting(
        "", "JWT verification key: a PEM public key/certificate (RS256, ES256) or an HS256 secret."
    )
    auth_jwks_file: str = setting("", "JWT verification keys as a JWKS file (chosen by kid).")
    auth_jwt_issuer: str = setting("", "Required JWT iss claim (empty: not checked).")
    auth_jwt_audience: str = setting("", "Required JWT aud claim (empty: not checked).")
    auth_jwt_algorithms: str = setting(
        "RS256,ES256,HS256",
        "JWT algorithms accepted, comma-separated (a key only verifies tokens of its own kind).",
    )
    service_token_file: str = setting(
        "", "Token this service sends on every call to another service (role service)."
    )
    max_streams_per_identity: int = setting(
        64,
        "With auth: most streams (watches, status streams, ModelStreamInfer) one identity may "
        "hold open on this process, so one identity cannot take every watcher slot.",
    )
    identity_rate_limit: float = setting(
        0.0,
        "With auth: unary calls per second per identity (token bucket; 0 = off; meant for the "
        "gateway; service identities exempt). Over it: RESOURCE_EXHAUSTED + pushback.",
    )
    identity_rate_burst: int = setting(
        0, "Token-bucket size of identity_rate_limit (0 = one second's worth)."
    )
    identity_max_concurrent: int = setting(
        0, "With auth: most unary calls one identity may have in flight (0 = off; gateway)."
    )

    def resolved_metrics_port(self, bound_port: int) -> int | None:
        if self.metrics_port == -2:
            return None
        if self.metrics_port == -1:
            return 0 if self.port == 0 else bound_port + 1
        return self.metrics_port

    def resolved_drain_seconds(self) -> float:
        if self.drain_seconds >= 0:
            return self.drain_seconds
        if self.discovery == "consul":
            return 11.0
        if self.discovery == "dns":
            # Kubernetes unpublishes a terminating pod at once; callers see it gone after the
            # cluster DNS TTL (CoreDNS: 5 s) plus their own refresh period.
            return 2 * self.dns_refresh_seconds + 1
        return 0.2

    def validate(self) -> None:
        """Fail fast on impossible values; subclasses extend."""
        _one_of("discovery", self.discovery, ("static", "consul", "dns"))
        if self.consul_reconcile_seconds <= 0:
            raise SettingsError(
                f"consul_reconcile_seconds must be positive, got {self.consul_reconcile_seconds}"
            )
        if self.dns_refresh_seconds <= 0:
            raise SettingsError(
                f"dns_refresh_seconds must be positive, got {self.dns_refresh_seconds}"
            )
        _one_of("trace_exporter", self.trace_exporter, ("none", "console", "otlp"))
        _one_of("log_format", self.log_format, ("text", "json"))
        tls_problems = _tls_problems(self)
        if tls_problems:
            raise SettingsError("; ".join(tls_problems))
        if self.auth and not (
            self.auth_keys_file
            or self.auth_jwt_key_file
            or self.auth_jwks_file
            or self.tls_service_sans
        ):
            raise SettingsError(
                "auth is on but no credentials can be checked: set auth_keys_file, "
                "auth_jwt_key_file, auth_jwks_file or tls_service_sans"
            )
        if (self.tls_service_sans or self.tls_admin_sans) and not (
            self.tls_cert_file and self.tls_ca_file
        ):
            raise SettingsError(
                "tls_service_sans/tls_admin_sans need TLS with a CA (tls_cert_file, "
                "tls_ca_file): only a verified client certificate names its peer"
            )
        if not 0.0 <= self.trace_sample_ratio <= 1.0:
            raise SettingsError(
                f"trace_sample_ratio must be in [0, 1], got {self.trace_sample_ratio}"
            )


class SettingsError(ValueError):
    """A setting is missing or impossible; raised before anything starts."""


def _tls_problems(settings: CommonSettings) -> list[str]:
    return TLSConfig.from_settings(settings).problems()


def _one_of(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


S = TypeVar("S", bound=CommonSettings)


def _base_type(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def _parse(raw: str, tp: Any, name: str) -> Any:
    tp = _base_type(tp)
    try:
        if tp is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
        if get_origin(tp) is list:
            return [part.strip() for part in raw.split(",") if part.strip()]
        return raw
    except ValueError:
        raise SettingsError(f"setting {name}: cannot parse {raw!r} as {tp.__name__}") from None


def env_names(f: dataclasses.Field[Any]) -> list[str]:
    return [ENV_PREFIX + f.name.upper(), *f.metadata.get("env", ())]


def load_settings(
    cls: type[S], argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> S:
    """Build ``cls`` from defaults, then ``env``, then ``argv`` flags (``--field-name value``)."""
    env = os.environ if env is None else env
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    parser = argparse.ArgumentParser(prog=cls.__name__, add_help=True)
    for f in dataclasses.fields(cls):
        for name in env_names(f):
            if name in env and env[name] != "":
                values[f.name] = _parse(env[name], hints[f.name], name)
                break
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, default=None, help=f.metadata.get("help")
        )
    args = parser.parse_args(list(argv or []))
    for f in dataclasses.fields(cls):
        raw = getattr(args, f.name)
        if raw is not None:
            values[f.name] = _parse(raw, hints[f.name], "--" + f.name.replace("_", "-"))
    settings = cls(**values)
    settings.validate()
    return settings


def describe(settings: CommonSettings) -> dict[str, Any]:
    """The resolved config for the one startup log line; secrets masked."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        out[f.name] = "***" if f.metadata.get("secret") and value else value
    return out


def settings_table(cls: type[CommonSettings]) -> str:
    """A markdown table of every setting: env names, flag, default, help (docs/configuration.md)."""
    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        env = " / ".join(f"`{n}`" for n in env_names(f))
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        rows.append(f"| {env} | `{flag}` | `{default!r}` | {f.metadata.get('help', '')} |")
    return "\n".join(rows)
