"""Prometheus metrics on a side HTTP port, one registry per process.

Names follow Prometheus conventions (``modelserve_<what>_<unit>``); labels are bounded (model
and version come from the registry, never from arbitrary caller strings).
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

RPC_REQUESTS = Counter(
    "modelserve_rpc_requests_total", "RPCs handled, by method and status code", ["method", "code"]
)
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
READY = Gauge("modelserve_ready", "1 when this service reports SERVING")
# Router: enrichment and caches. Views, models and versions come from the registry.
FEATURE_CACHE_HITS = Counter(
    "modelserve_feature_cache_hits_total",
    "Entity keys whose features the router's feature cache answered, by view",
    ["view"],
)
FEATURE_CACHE_MISSES = Counter(
    "modelserve_feature_cache_misses_total",
    "Entity keys the router's feature cache did not hold (asked of the feature store), by view",
    ["view"],
)
FEATURE_LOOKUP_SECONDS = Histogram(
    "modelserve_feature_lookup_seconds",
    "Time of the router's GetOnlineFeatures calls, by view",
    ["view"],
    buckets=LATENCY_BUCKETS,
)
PREDICTION_CACHE_HITS = Counter(
    "modelserve_prediction_cache_hits_total",
    "Requests answered from the prediction cache (the worker was not called)",
    ["model", "version"],
)
PREDICTION_CACHE_MISSES = Counter(
    "modelserve_prediction_cache_misses_total",
    "Requests of cached versions the prediction cache did not hold",
    ["model", "version"],
)
PREDICTION_CACHE_ERRORS = Counter(
    "modelserve_prediction_cache_errors_total",
    "Prediction cache operations that failed (the request was served without the cache)",
    ["backend", "operation", "reason"],
)


def start_metrics_server(host: str, port: int) -> tuple[Any, int]:
    """Serve /metrics on (host, port) in a daemon thread; returns the server and bound port."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    bound = int(server.server_port)
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return server, bound
