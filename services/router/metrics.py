"""The router's Prometheus series: enrichment and caches. Views, models and versions come
from the registry, never from caller strings."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from modelserve.metrics import LATENCY_BUCKETS

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

FEATURE_FALLBACKS = Counter(
    "modelserve_feature_fallbacks_total",
    "Calls the router served with a version's fallback_values because the feature store could "
    "not answer (T33 fail-open policy), by view",
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
