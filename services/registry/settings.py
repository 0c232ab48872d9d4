"""Registry settings."""

from __future__ import annotations

from dataclasses import dataclass

from modelserve.server import dependency
from modelserve.settings import (
    ARTIFACT_FETCH_TIMEOUT_HELP,
    S3_ENDPOINT_HELP,
    CommonSettings,
    setting,
)


@dataclass
class RegistrySettings(CommonSettings):
    port: int = setting(8301, "gRPC port (modelserve.v1.Registry; admin plane).")
    data_dir: str = setting(
        ".modelserve-data/registry", "SQLite metadata and content-addressed artifacts."
    )
    registry_database_url: str = setting(
        "",
        "Where the registry keeps its metadata: empty = SQLite files in data_dir (one replica); "
        "postgresql://user:pass@host:5432/db = that PostgreSQL database, which several "
        "replicas can share (needs the `postgres` extra).",
        secret=True,
    )
    replica_id: str = setting(
        "",
        "This replica's name in controller leases and canary decisions (default: host-pid).",
    )
    lease_seconds: float = setting(
        10.0,
        "How long a controller lease (canaries, pending policies) lasts unrenewed: how soon "
        "another replica takes over from one that died.",
    )
    max_artifact_bytes: int = setting(
        2 << 30, "Largest ONNX file a push may upload (or point at, by reference)."
    )
    artifact_uri_prefixes: str = setting(
        "",
        "URI prefixes a push by reference may point under, comma-separated (e.g. "
        "s3://models/,https://models.internal/,file:///srv/models/); a prefix matches on a "
        "path boundary, file:// after resolving links. Empty = pushes by reference are refused.",
    )
    artifact_fetch_timeout_seconds: float = setting(
        ARTIFACT_FETCH_TIMEOUT_HELP[0], ARTIFACT_FETCH_TIMEOUT_HELP[1]
    )
    s3_endpoint_url: str = setting(S3_ENDPOINT_HELP[0], S3_ENDPOINT_HELP[1])
    max_receive_message_bytes: int = setting(
        8 << 20, "Largest gRPC message accepted (pushes stream 1 MiB chunks)."
    )
    canary_interval_seconds: float = setting(
        2.0, "How often running canaries read the routers and judge their step."
    )
    policy_ready_timeout_seconds: float = setting(
        300.0,
        "How long a pending routing policy waits for its versions to be READY before it fails.",
    )
    router_addrs: str = dependency(
        "router",
        "",
        "Routers to ask which versions workers hold READY (static discovery; comma-separated). "
        "With none known, policy writes are not readiness-gated.",
    )
    gateway_addrs: str = dependency(
        "gateway",
        "",
        "Gateways whose rejections canaries count (static/dns discovery; comma-separated). "
        "With none known, only the routers' counts gate a canary.",
    )
