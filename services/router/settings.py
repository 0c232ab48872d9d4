"""Router settings."""

from __future__ import annotations

from dataclasses import dataclass

from modelserve.server import dependency
from modelserve.settings import MIB, CommonSettings, SettingsError, setting


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
    feature_cache_ttl_seconds: float = setting(
        1.0, "How long the router keeps a looked-up feature row; 0 = no feature cache."
    )
    feature_cache_max_entries: int = setting(
        100_000, "Feature rows (view, features, entity key) the router's cache holds at most."
    )
    feature_budget_seconds: float = setting(
        0.05,
        "Most time a feature lookup or prediction-cache call may take; the budget is this or "
        "20% of the caller's remaining deadline, whichever is less (RELIABILITY.md).",
    )
    prediction_cache_redis_url: str = setting(
        "",
        "Redis URL of a prediction cache shared by all routers (AUTH/TLS in the URL); empty = "
        "an in-process LRU per router.",
        secret=True,
    )
    prediction_cache_redis_key_prefix: str = setting(
        "modelserve:pc:", "Prefix of every prediction-cache key written to Redis."
    )
    prediction_cache_max_entries: int = setting(
        10_000, "Answers the in-process prediction cache holds at most."
    )
    prediction_cache_max_bytes: int = setting(
        256 * MIB, "Bytes of answers the in-process prediction cache holds at most."
    )
    prediction_cache_max_value_bytes: int = setting(
        1 * MIB, "Answers larger than this are not cached."
    )
    shadow_max_in_flight: int = setting(
        64, "Shadow calls in flight at most; a sampled call beyond it is dropped and counted."
    )
    shadow_timeout_factor: float = setting(
        3.0, "A shadow call's deadline is the primary call's latency times this (bounded below)."
    )
    shadow_min_timeout_seconds: float = setting(0.05, "Shortest deadline of a shadow call.")
    shadow_max_timeout_seconds: float = setting(1.0, "Longest deadline of a shadow call.")

    def validate(self) -> None:
        super().validate()
        if not 0 < self.feature_budget_seconds <= 10:
            raise SettingsError(
                f"feature_budget_seconds must be in (0, 10]; got {self.feature_budget_seconds}"
            )
        if not 0 < self.shadow_min_timeout_seconds <= self.shadow_max_timeout_seconds:
            raise SettingsError(
                "shadow timeouts must satisfy 0 < shadow_min_timeout_seconds <= "
                f"shadow_max_timeout_seconds; got {self.shadow_min_timeout_seconds} and "
                f"{self.shadow_max_timeout_seconds}"
            )
        if self.shadow_max_in_flight < 1 or self.shadow_timeout_factor <= 0:
            raise SettingsError(
                "shadow_max_in_flight must be >= 1 and shadow_timeout_factor > 0; got "
                f"{self.shadow_max_in_flight} and {self.shadow_timeout_factor}"
            )
        if self.feature_cache_ttl_seconds < 0:
            raise SettingsError(
                f"feature_cache_ttl_seconds must be >= 0; got {self.feature_cache_ttl_seconds}"
            )
