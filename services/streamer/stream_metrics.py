"""The streamer's Prometheus metrics (served on the runtime's metrics port). Labels are the
group and consumer names from settings and a bounded reason (a gRPC code name or one of the
streamer's own reasons), never event data."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LABELS = ["group", "consumer"]
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
E2E_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

EVENTS_IN = Counter("modelserve_stream_events_in_total", "Deliveries read from the source", LABELS)
EVENTS_OUT = Counter(
    "modelserve_stream_events_out_total",
    "Results written to the sink (duplicates excluded)",
    LABELS,
)
EVENTS_FAILED = Counter(
    "modelserve_stream_events_failed_total",
    "Events written to the dead-letter stream, by reason (gRPC code or streamer reason)",
    [*LABELS, "reason"],
)
DUPLICATES = Counter(
    "modelserve_stream_duplicates_total",
    "Redelivered events whose result was already written (dedupe window hits)",
    LABELS,
)
RECLAIMED = Counter(
    "modelserve_stream_reclaimed_total", "Pending entries claimed from dead consumers", LABELS
)
BROKER_ERRORS = Counter(
    "modelserve_stream_broker_errors_total", "Failed broker operations (retried)", [*LABELS, "op"]
)
BATCH_SIZE = Histogram(
    "modelserve_stream_batch_size", "Events per micro-batch", LABELS, buckets=BATCH_BUCKETS
)
E2E_LATENCY = Histogram(
    "modelserve_stream_latency_seconds",
    "End to end: event time (or broker arrival) to result written",
    LABELS,
    buckets=E2E_BUCKETS,
)
IN_FLIGHT = Gauge("modelserve_stream_batches_in_flight", "Batches being scored", LABELS)
LAG = Gauge(
    "modelserve_stream_consumer_lag",
    "Events of the group not done: pending (delivered, not acked) + not yet delivered",
    LABELS,
)
PENDING = Gauge("modelserve_stream_pending", "Delivered to the group, not acked yet", LABELS)
