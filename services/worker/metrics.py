"""The worker's Prometheus series: inference outcomes and latency, batch sizes, queue time and
depth, model loads."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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

QUEUE_REFUSED = Counter(
    "modelserve_queue_refused_total",
    "Requests the worker's batch queue turned away or dropped before their model run, by "
    "reason: queue_full (UNAVAILABLE at once), queue_wait (waited past the policy), deadline, "
    "cancelled (the caller left while queued), unloaded",
    ["model", "version", "reason"],
)

# Read at scrape time from the batcher (set_function): the autoscaling signal costs the request
# path nothing. Removed when the version is unloaded.
QUEUE_DEPTH = Gauge(
    "modelserve_queue_depth",
    "Requests waiting in the worker's batch queue for a model run",
    ["model", "version"],
)
QUEUE_CAPACITY = Gauge(
    "modelserve_queue_capacity",
    "Requests the version's batch queue holds before it answers UNAVAILABLE (max_queue_size)",
    ["model", "version"],
)
BATCHES_RUNNING = Gauge(
    "modelserve_batches_running",
    "Model runs in progress (at most the version's instance_count)",
    ["model", "version"],
)
MODEL_LOADS = Counter(
    "modelserve_model_loads_total",
    "Version loads by outcome (ready, failed)",
    ["model", "version", "outcome"],
)
MODEL_LOAD_SECONDS = Histogram(
    "modelserve_model_load_seconds",
    "Time from a version being deployed to READY (fetch, session, warmup)",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
