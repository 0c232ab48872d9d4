"""Router settings."""

from __future__ import annotations

from dataclasses import dataclass

from modelserve.server import dependency
from modelserve.settings import CommonSettings, setting


@dataclass
class RouterSettings(CommonSettings):
    port: int = setting(8101, "gRPC port (V2 inference + modelserve.v1.RouterControl).")
    registry_addr: str = dependency(
        "registry", "127.0.0.1:8301", "Registry address(es), comma-separated (static discovery)."
    )
    worker_addrs: str = dependency(
        "worker", "127.0.0.1:8201", "Worker addresses, comma-separated (static discovery)."
    )
    featurestore_addr: str = dependency(
        "featurestore", "127.0.0.1:8401", "Feature store address (static discovery)."
    )
    retry_attempts: int = setting(
        1, "Extra attempts on another worker after UNAVAILABLE (inference is idempotent)."
    )
    default_timeout_seconds: float = setting(
        2.0, "Deadline for a forwarded request when the caller sent none."
    )
