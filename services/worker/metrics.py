"""The worker's Prometheus series: inference outcomes and latency, batch sizes, queue time."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from modelserve.metrics import LATENCY_BUCKETS

INFER_REQUESTS = Counter(
    "modelserve_infer_requests_total",
    "Inference requests by model, version and outcome",
    ["model", "version", "outcome"],
)

INFER_LATENCY = Histogram(
    "modelserve_infer_latency_seconds",
    "Inference latency as seen by this service",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)

# Rows per model run: powers of two up to RELIABILITY.md's max batch of 64.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
BATCH_SIZE = Histogram(
    "modelserve_batch_size",
    "Rows per model run formed by the worker's dynamic batcher",
    ["model", "version"],
    buckets=BATCH_SIZE_BUCKETS,
)

QUEUE_SECONDS = Histogram(
    "modelserve_queue_seconds",
    "Time a request waited in the worker's batch queue before its model run started",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)

STOPPED_RUNS = Counter(
    "modelserve_stopped_runs_total",
    "Model runs stopped while running because every caller had gone (deadline or cancel)",
    ["model", "version"],
)
