"""Gateway settings."""

from __future__ import annotations

from dataclasses import dataclass

from modelserve.server import dependency
from modelserve.settings import CommonSettings, setting


@dataclass
class GatewaySettings(CommonSettings):
    port: int = setting(8001, "Public V2 gRPC port (where V2 clients look first).")
    http_port: int = setting(
        8000,
        "V2 REST/HTTP port (Triton's HTTP binding, same data plane as gRPC); 0 = off, "
        "-1 = any free port (tests).",
    )
    http_server: str = setting(
        "asyncio",
        "HTTP server of the REST face: asyncio (httptools parser; the fastest measured), "
        "aiohttp or uvicorn (the benchmark's comparisons, bench/http_bench.py).",
    )
    router_addr: str = dependency(
        "router", "127.0.0.1:8101", "Router address(es), comma-separated (static discovery)."
    )
    registry_addr: str = dependency(
        "registry", "127.0.0.1:8301", "Registry address(es) for model metadata (static discovery)."
    )
    worker_addrs: str = dependency(
        "worker",
        "127.0.0.1:8201",
        "Worker addresses, comma-separated (static discovery), for the direct lane.",
    )
    direct_worker_lane_enabled: bool = setting(
        True,
        "Send requests for versions that need no router (no features, prediction cache, "
        "shadow or lookup) straight to a worker holding them READY: one hop instead of two.",
    )
    direct_lane_streams_enabled: bool = setting(
        True,
        "Direct lane: send its calls as messages of one long-lived stream per worker "
        "(WorkerLane) instead of one unary RPC each: less CPU per call at both ends and half "
        "the round trip (gateway/stream_lane.py).",
    )
    worker_retry_attempts: int = setting(
        1, "Direct lane: retries on another worker after UNAVAILABLE (as the router's)."
    )
    tls_require_client_cert: bool = setting(
        False,
        "The public edge: with TLS on, clients need no certificate (set true to require one "
        "issued by tls_ca_file).",
    )
    default_deadline_seconds: float = setting(
        2.0, "Deadline applied when a client sends none (RELIABILITY.md)."
    )
    min_deadline_seconds: float = setting(0.01, "Client deadlines are clamped to at least this.")
    max_deadline_seconds: float = setting(30.0, "Client deadlines are clamped to at most this.")
    merge_enabled: bool = setting(
        True, "Merge concurrent requests for one model version into one internal call."
    )
    merge_max_bytes: int = setting(
        8 << 20,
        "Most tensor bytes in one merged call; keep it under the routers' "
        "max_receive_message_bytes (a larger request travels alone).",
    )
    merge_max_in_flight: int = setting(
        1, "Internal calls per model version before requests queue to be merged."
    )
    merge_gather_turns: int = setting(
        0,
        "After a call returns with requests queued, event-loop turns the next call waits for "
        "more (0: it leaves at once). Larger calls at saturation, at a cost in tail latency "
        "(docs/architecture.md, Merging and batching).",
    )
