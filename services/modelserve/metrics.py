"""Prometheus metrics on a side HTTP port, one registry per process: the series every service
exports (RPCs, readiness) and the shared bucket layout. A service's own series live in that
service (``worker/metrics.py``, ``router/metrics.py``).

Names follow Prometheus conventions (``modelserve_<what>_<unit>``); labels are bounded (model
and version come from the registry, never from arbitrary caller strings).
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, Counter, Gauge, make_wsgi_app, start_http_server
from prometheus_client.exposition import ThreadingWSGIServer

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

RPC_REQUESTS = Counter(
    "modelserve_rpc_requests_total", "RPCs handled, by method and status code", ["method", "code"]
)
READY = Gauge("modelserve_ready", "1 when this service reports SERVING")


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
