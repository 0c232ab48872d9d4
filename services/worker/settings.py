"""Worker settings."""

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
class WorkerSettings(CommonSettings):
    port: int = setting(
        8201, "gRPC port (V2 inference, modelserve.v1.WorkerControl and WorkerLane)."
    )
    registry_addr: str = dependency(
        "registry", "127.0.0.1:8301", "Registry address(es), comma-separated (static discovery)."
    )
    data_dir: str = setting(".modelserve-data/worker", "Artifact cache directory.")
    artifact_direct_fetch_enabled: bool = setting(
        True,
        "Fetch versions pushed by reference straight from their artifact URI (sha256 "
        "verified); off, or when the URI cannot be read from here, the registry relays them.",
    )
    artifact_fetch_timeout_seconds: float = setting(
        ARTIFACT_FETCH_TIMEOUT_HELP[0], ARTIFACT_FETCH_TIMEOUT_HELP[1]
    )
    s3_endpoint_url: str = setting(S3_ENDPOINT_HELP[0], S3_ENDPOINT_HELP[1])
    models: str = setting("", "Comma-separated model names this worker holds; empty = every model.")
    gpu_mem_limit_bytes: int = setting(
        0, "CUDA memory arena limit per model version in bytes; 0 = unlimited."
    )
    io_binding: str = setting("auto", "ONNX Runtime IO binding: auto (on with CUDA), on or off.")
    inline_max_us: float = setting(
        100.0,
        "Versions whose largest warm batch runs in at most this many microseconds (the "
        "fastest of 7 runs) run on the event loop instead of an executor thread (the "
        "hand-off, ~100 us of two thread wake-ups, costs more); 0 = never.",
    )
    ort_spinning_enabled: bool = setting(
        False,
        "Let ONNX Runtime's intra-op threads spin between work items: about half the latency "
        "of one compute-bound request at about three times the CPU per run. For workers that "
        "own their cores (not the shared all-in-one box).",
    )
    min_budget_ms: float = setting(
        5.0, "A request with less deadline left than this is refused with DEADLINE_EXCEEDED."
    )
    unload_grace_seconds: float = setting(
        5.0, "How long a version no longer deployed keeps its session for in-flight requests."
    )
    model_load_retry_count: int = setting(
        1,
        "How many times a version whose load failed (fetch, sha256, session, warm-up) is tried "
        "again before it is FAILED (RELIABILITY.md; Triton's --model-load-retry-count).",
    )
    strict_readiness_enabled: bool = setting(
        True,
        "Health (and so Consul's check) says SERVING only once every version deployed when the "
        "first registry snapshot arrived is READY or FAILED; off: as soon as that snapshot is "
        "in. Each model also has its own health name, SERVING while one of its versions is "
        "READY here.",
    )
