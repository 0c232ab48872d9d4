"""Structured logs that carry the trace id, so a log line leads to its trace."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

from opentelemetry import trace


class _TraceIdFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else ""
        record.service = self._service
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": getattr(record, "service", ""),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            out["trace_id"] = trace_id
        for key in ("model", "version"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class GoneCallerFilter(logging.Filter):
    """grpc.aio logs an ERROR with a traceback (ExecuteBatchError) for every response it could
    not send because the caller had already gone (its deadline passed, or it cancelled): a
    caller could flood the logs with short deadlines. Those become one WARNING at most every
    ``interval_s`` with the count since the last one; other records pass unchanged."""

    MARKER = "ExecuteBatchError raised in core"

    def __init__(
        self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._interval = interval_s
        self._clock = clock
        self._last = -interval_s
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self.MARKER):
            return True
        self.suppressed += 1
        now = self._clock()
        if now - self._last < self._interval:
            return False
        self._last = now
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = (
            "%d responses not sent in the last %.0f s: their callers had gone (deadline or cancel)"
        )
        record.args = (self.suppressed, self._interval)
        record.exc_info = record.exc_text = None
        self.suppressed = 0
        return True


TEXT_FORMAT = "%(asctime)s %(levelname)s %(service)s %(name)s [trace=%(trace_id)s] %(message)s"


def configure_logging(service: str, level: str = "INFO", fmt: str = "text") -> None:
    """Route every log record to stderr, as text or one JSON object a line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_TraceIdFilter(service))
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    grpc_core = logging.getLogger("grpc._cython.cygrpc")
    grpc_core.filters[:] = [f for f in grpc_core.filters if not isinstance(f, GoneCallerFilter)]
    grpc_core.addFilter(GoneCallerFilter())
    root.setLevel(level.upper())
