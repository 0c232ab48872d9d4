"""Prometheus metrics on a side HTTP port, one registry per process: the series every service
exports (RPCs, readiness) and the shared bucket layout. A service's own series live in that
service (``worker/metrics.py``, ``router/metrics.py``).

Names follow Prometheus conventions (``modelserve_<what>_<unit>``); labels are bounded (model
and version come from the registry, never from arbitrary caller strings).
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, start_http_server

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
HTTP_REQUESTS = Counter(
    "modelserve_http_requests_total",
    "V2 REST requests answered, by route template (/v2/models/{model}/infer) and HTTP status",
    ["route", "code"],
)
READY = Gauge("modelserve_ready", "1 when this service reports SERVING")


def start_metrics_server(host: str, port: int) -> tuple[Any, int]:
    """Serve /metrics on (host, port) in a daemon thread; returns the server and bound port."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    bound = int(server.server_port)
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return server, bound
