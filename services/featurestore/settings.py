"""Feature store settings."""

from __future__ import annotations

from dataclasses import dataclass

from modelserve.settings import CommonSettings, SettingsError, setting


@dataclass
class FeatureStoreSettings(CommonSettings):
    port: int = setting(8401, "gRPC port (modelserve.v1.FeatureStore).")
    data_dir: str = setting(
        ".modelserve-data/featurestore", "Feature view catalog and the SQLite online store."
    )
    online_store: str = setting("sqlite", "Online store backend: sqlite or redis.")
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0", "Redis URL for the redis backend (AUTH/TLS in the URL)."
    )
    redis_key_prefix: str = setting("modelserve:fs:", "Prefix of every Redis key written.")
    redis_socket_timeout_seconds: float = setting(
        0.05, "Redis socket timeout (RELIABILITY.md: sized to the 50 ms feature budget)."
    )

    def validate(self) -> None:
        super().validate()
        if self.online_store not in ("sqlite", "redis"):
            raise SettingsError(f"online_store must be sqlite or redis; got {self.online_store!r}")
