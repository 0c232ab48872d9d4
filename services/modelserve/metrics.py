"""Prometheus metrics on a side HTTP port, one registry per process: the series every service
exports (RPCs, readiness) and the shared bucket layout. A service's own series live in that
service (``worker/metrics.py``, ``router/metrics.py``).

Names follow Prometheus conventions (``modelserve_<what>_<unit>``); labels are bounded (model
and version come from the registry, never from arbitrary caller strings).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import grpc
from grpc import aio
from prometheus_client import REGISTRY, Counter, Gauge, make_wsgi_app, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.utils import floatToGoString

from modelserve.interceptors import Behaviour, BehaviourInterceptor
from modelserve.tls import ReloadingSSLContext, TLSConfig

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


class LoopSeries:
    """One labelled family written only from the service's event loop and read when scraped.

    prometheus_client takes a lock and walks four Python calls per ``inc``/``observe``; the
    gateway made ten of them per request (~8 us of its ~30 us of Python per request, measured
    with bench/gateway_path.py). Here a series is a plain list cell the loop adds to (the GIL
    makes each add whole; a scrape may see a request's count a moment before its duration),
    exported by ``LoopCollector`` with the same names, labels and buckets as before.
    """

    def __init__(self, kind: str, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.kind, self.name, self.documentation = kind, name, documentation
        self.labelnames = tuple(labels)
        # labels -> [value] (counter, gauge) or [bucket counts..., +Inf count, sum] (histogram)
        self.cells: dict[tuple[str, ...], list[Any]] = {}

    def cell(self, *labels: str) -> list[Any]:
        """The cell of one label set, made on first use (keep it: a lookup per call is what
        this class exists to avoid)."""
        found = self.cells.get(labels)
        if found is None:
            size = len(LATENCY_BUCKETS) + 2 if self.kind == "histogram" else 1
            found = self.cells[labels] = [0] * size
            if self.kind == "histogram":
                found[-1] = 0.0
        return found


def observe(cell: list[Any], seconds: float) -> None:
    """Add one observation to a histogram cell of ``LoopSeries``."""
    cell[bisect_left(LATENCY_BUCKETS, seconds)] += 1
    cell[-1] += seconds


class LoopCollector:
    """Exports every ``LoopSeries`` at scrape time (registered once in the default registry)."""

    def __init__(self) -> None:
        self.series: list[LoopSeries] = []

    def add(self, kind: str, name: str, documentation: str, labels: Sequence[str]) -> LoopSeries:
        series = LoopSeries(kind, name, documentation, labels)
        self.series.append(series)
        return series

    def describe(self) -> list[Any]:
        return []  # no duplicate-name check against these: their names are ours alone

    def collect(self) -> Iterator[Any]:
        for series in self.series:
            items = list(series.cells.items())  # a copy: the loop may add a label set now
            if series.kind == "counter":
                family: Any = CounterMetricFamily(
                    series.name, series.documentation, labels=series.labelnames
                )
                for labels, cell in items:
                    family.add_metric(labels, cell[0])
            elif series.kind == "gauge":
                family = GaugeMetricFamily(
                    series.name, series.documentation, labels=series.labelnames
                )
                for labels, cell in items:
                    family.add_metric(labels, cell[0])
            else:
                family = HistogramMetricFamily(
                    series.name, series.documentation, labels=series.labelnames
                )
                for labels, cell in items:
                    counts, total, running = cell[:-1], cell[-1], 0
                    buckets = []
                    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                        running += count
                        buckets.append((floatToGoString(bound), running))
                    family.add_metric(labels, buckets, sum_value=total)
            yield family


LOOP_METRICS = LoopCollector()
REGISTRY.register(LOOP_METRICS)

# RED per RPC, by the one interceptor every service runs outermost (``RpcMetricsInterceptor``):
# no RPC can be forgotten, and calls refused by admission are counted too.
RPC_REQUESTS = LOOP_METRICS.add(
    "counter",
    "modelserve_rpc_requests_total",
    "RPCs handled, by service, gRPC method and status code",
    ["service", "method", "code"],
)
RPC_DURATION = LOOP_METRICS.add(
    "histogram",
    "modelserve_rpc_duration_seconds",
    "Time from the RPC reaching this service's handlers to its end, by service and method",
    ["service", "method"],
)
RPC_IN_FLIGHT = LOOP_METRICS.add(
    "gauge",
    "modelserve_rpc_in_flight",
    "RPCs in progress, by service and method",
    ["service", "method"],
)
# RED per model version where the version is known (the gateway for the whole path, the
# router for its hop): model and version labels only ever come from the registry's catalog.
MODEL_REQUESTS = LOOP_METRICS.add(
    "counter",
    "modelserve_model_requests_total",
    "Inference requests by service, model, version and status code",
    ["service", "model", "version", "code"],
)
MODEL_DURATION = LOOP_METRICS.add(
    "histogram",
    "modelserve_model_request_duration_seconds",
    "Inference request latency by service, model and version (every outcome)",
    ["service", "model", "version"],
)
MODEL_IN_FLIGHT = LOOP_METRICS.add(
    "gauge",
    "modelserve_model_in_flight",
    "Inference requests in progress by service and model (an autoscaling signal)",
    ["service", "model"],
)
HTTP_REQUESTS = Counter(
    "modelserve_http_requests_total",
    "V2 REST requests answered, by route template (/v2/models/{model}/infer) and HTTP status",
    ["route", "code"],
)
READY = Gauge("modelserve_ready", "1 when this service reports SERVING")


def status_name(exc: BaseException) -> str:
    """The status name a call that raised ``exc`` ends with."""
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    code = getattr(exc, "code", None)
    if isinstance(code, grpc.StatusCode):
        return code.name
    if callable(code):
        found = code()
        if isinstance(found, grpc.StatusCode):
            return found.name
    return "INTERNAL"


class ModelMetrics:
    """Per (model, version) RED for one service, on ``LoopSeries`` cells kept per pair. Also
    keeps, per pair, the count and nanoseconds of successful and failed requests: what V2
    ModelStatistics calls ``success`` and ``fail``, as seen by this service."""

    def __init__(self, service: str) -> None:
        self._service = service
        self._children: dict[tuple[str, int], tuple[list[Any], list[Any]]] = {}
        self._counters: dict[tuple[str, int, str], list[Any]] = {}
        # (model, version) -> [success count, success ns, fail count, fail ns]
        self.durations: dict[tuple[str, int], list[int]] = {}

    def start(self, model: str, version: int) -> float:
        found = self._children.get((model, version))
        if found is None:
            found = self._pair(model, version)
        found[1][0] += 1
        return time.perf_counter()

    def end(self, model: str, version: int, started: float, code: str) -> None:
        seconds = time.perf_counter() - started
        pair = (model, version)
        duration, in_flight = self._children.get(pair) or self._pair(model, version)
        in_flight[0] -= 1
        observe(duration, seconds)
        totals = self.durations.get(pair)
        if totals is None:
            totals = self.durations[pair] = [0, 0, 0, 0]
        slot = 0 if code == "OK" else 2
        totals[slot] += 1
        totals[slot + 1] += int(seconds * 1e9)
        key = (model, version, code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = MODEL_REQUESTS.cell(
                self._service, model, str(version), code
            )
        counter[0] += 1

    def _pair(self, model: str, version: int) -> tuple[list[Any], list[Any]]:
        found = self._children.get((model, version))
        if found is None:
            found = self._children[(model, version)] = (
                MODEL_DURATION.cell(self._service, model, str(version)),
                MODEL_IN_FLIGHT.cell(self._service, model),
            )
        return found


class RpcMetricsInterceptor(BehaviourInterceptor):
    """Counts every RPC (requests by status, duration, in flight) of one service. It runs
    first, so what admission refuses is counted with its RESOURCE_EXHAUSTED."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def wrap(self, method: str, fn: Behaviour, streaming: bool) -> Behaviour:
        name = method.rsplit("/", 1)[-1]
        duration = RPC_DURATION.cell(self._service, name)
        in_flight = RPC_IN_FLIGHT.cell(self._service, name)
        counters: dict[str, list[Any]] = {}
        perf_counter = time.perf_counter

        def finish(started: float, code: str) -> None:
            in_flight[0] -= 1
            seconds = perf_counter() - started
            duration[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            duration[-1] += seconds
            counter = counters.get(code)
            if counter is None:
                counter = counters[code] = RPC_REQUESTS.cell(self._service, name, code)
            counter[0] += 1

        if streaming:

            async def stream_behaviour(
                request: Any, context: aio.ServicerContext
            ) -> AsyncIterator[Any]:
                started = perf_counter()
                in_flight[0] += 1
                code = "OK"
                try:
                    async for item in fn(request, context):
                        yield item
                    code = _code_of(context, "OK")
                except aio.AbortError:
                    code = _code_of(context, "UNKNOWN")
                    raise
                except BaseException as exc:
                    code = status_name(exc)
                    raise
                finally:
                    finish(started, code)

            return stream_behaviour

        async def unary_behaviour(request: Any, context: aio.ServicerContext) -> Any:
            started = perf_counter()
            in_flight[0] += 1
            code = "OK"
            try:
                answer = await fn(request, context)
                code = _code_of(context, "OK")
                return answer
            except aio.AbortError:
                code = _code_of(context, "UNKNOWN")
                raise
            except BaseException as exc:
                code = status_name(exc)
                raise
            finally:
                finish(started, code)

        return unary_behaviour


def _code_of(context: aio.ServicerContext, default: str) -> str:
    found = context.code()
    if isinstance(found, grpc.StatusCode):
        return found.name
    return default


def start_metrics_server(host: str, port: int, tls: TLSConfig | None = None) -> tuple[Any, int]:
    """Serve /metrics on (host, port) in a daemon thread; returns the server and bound port.

    With TLS on, HTTPS with the service's certificate (reloaded when its files change)."""
    if tls is None or not tls.enabled:
        server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
        scheme = "http"
    else:
        server = _start_https(host, port, ReloadingSSLContext(tls))
        scheme = "https"
    bound = int(server.server_port)
    log.info("metrics on %s://%s:%d/metrics", scheme, host, bound)
    return server, bound


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _start_https(host: str, port: int, certificates: ReloadingSSLContext) -> Any:
    class HTTPSServer(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def get_request(self) -> tuple[Any, Any]:
            sock, addr = self.socket.accept()
            certificates.refresh()
            # The handshake happens in the request's own thread: a stalled client never
            # holds up the accept loop.
            wrapped = certificates.context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
            return wrapped, addr

        def handle_error(self, request: Any, client_address: Any) -> None:
            # A plaintext or untrusting client fails its handshake: one line, no traceback.
            log.debug("metrics connection from %s failed", client_address, exc_info=True)

    httpd = make_server(
        host, port, make_wsgi_app(REGISTRY), HTTPSServer, handler_class=_QuietHandler
    )
    threading.Thread(target=httpd.serve_forever, name="metrics-https", daemon=True).start()
    return httpd
