"""OpenTelemetry tracing across every hop: W3C trace context rides in gRPC metadata.

``configure_tracing`` installs a tracer provider from settings (exporter none/console/otlp,
honouring OTEL_* variables); ``TracingInterceptor`` opens one SERVER span per RPC whose parent
is the caller's ``traceparent``; ``outbound_metadata`` puts the current context on calls we
make; ``http_server_span`` is the REST face's SERVER span. Spans never carry tensors or
feature values (RELIABILITY.md, Tracing).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import grpc
from grpc import aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace import SpanKind, Status, StatusCode

from modelserve.interceptors import Behaviour, BehaviourInterceptor

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str | bytes]]

# Set once tracing is configured: without it, injecting an empty context on every outbound
# call is pure overhead on the hot path.
_enabled = False


def configure_tracing(
    service_name: str,
    exporter: str,
    *,
    sample_ratio: float = 1.0,
    otlp_endpoint: str = "",
    span_exporter: SpanExporter | None = None,
) -> bool:
    """Install the global tracer provider. Returns False (and installs nothing) for "none".

    ``span_exporter`` lets tests pass an in-memory exporter.
    """
    if exporter == "none" and span_exporter is None:
        return False
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBasedTraceIdRatio(sample_ratio),
    )
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    elif exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        kwargs: dict[str, Any] = {"endpoint": otlp_endpoint} if otlp_endpoint else {}
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(**kwargs)))
    else:
        raise ValueError(f"unknown trace exporter {exporter!r}: expected none, console or otlp")
    trace.set_tracer_provider(provider)
    global _enabled
    _enabled = True
    log.info("tracing on: exporter=%s sample_ratio=%s", exporter, sample_ratio)
    return True


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def outbound_metadata(extra: Metadata = ()) -> list[tuple[str, str | bytes]]:
    """Metadata for an outbound call: ``extra`` plus the current W3C trace context."""
    if not _enabled:
        return list(extra)
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [*extra, *carrier.items()]


@contextlib.contextmanager
def http_server_span(
    service: str, method: str, route: str, headers: Mapping[str, str]
) -> Iterator[Any]:
    """The REST face's SERVER span (child of the request's ``traceparent`` header), current
    while the request is served, so hops it calls are its children as under a gRPC span.
    Yields the span (None when tracing is off: then this costs one truth test)."""
    if not _enabled:
        yield None
        return
    parent = propagate.extract(headers)
    span = trace.get_tracer(f"modelserve.{service}").start_span(
        f"{method} {route}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "http.route": route},
    )
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    try:
        yield span
    finally:
        span.end()
        try:
            otel_context.detach(token)
        except Exception:  # detaching in another context after a cancel is harmless
            pass


def set_http_status(span: Any, status: int) -> None:
    """Record the REST answer's status on ``http_server_span``'s span (5xx is an error)."""
    if span is None:
        return
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR, str(status)))


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


class TracingInterceptor(BehaviourInterceptor):
    """One SERVER span per RPC, child of the caller's ``traceparent`` metadata."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self._tracer = trace.get_tracer(f"modelserve.{service_name}")

    def _start(self, method: str, context: aio.ServicerContext) -> tuple[Any, object]:
        carrier: Mapping[str, Any] = {
            k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)
        }
        parent = propagate.extract(carrier)
        service, _, name = method.lstrip("/").partition("/")
        span = self._tracer.start_span(
            method.lstrip("/"),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return span, token

    @staticmethod
    def _finish(
        span: Any, token: object, context: aio.ServicerContext, exc: BaseException | None
    ) -> None:
        code = context.code() if hasattr(context, "code") else None
        if exc is not None and not isinstance(exc, aio.AbortError):
            span.record_exception(exc)
        if code not in (None, grpc.StatusCode.OK):
            span.set_status(Status(StatusCode.ERROR, str(code)))
            span.set_attribute("rpc.grpc.status_code", int(code.value[0]))
        span.end()
        try:
            otel_context.detach(token)  # type: ignore[arg-type]
        except Exception:  # detaching in another context after a cancel is harmless
            pass

    def wrap(self, method: str, fn: Behaviour, streaming: bool) -> Behaviour:
        if streaming:

            async def stream_behaviour(
                request: Any, context: aio.ServicerContext
            ) -> AsyncIterator[Any]:
                span, token = self._start(method, context)
                exc: BaseException | None = None
                try:
                    async for item in fn(request, context):
                        yield item
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    self._finish(span, token, context, exc)

            return stream_behaviour

        async def unary_behaviour(request: Any, context: aio.ServicerContext) -> Any:
            span, token = self._start(method, context)
            exc: BaseException | None = None
            try:
                return await fn(request, context)
            except BaseException as e:
                exc = e
                raise
            finally:
                self._finish(span, token, context, exc)

        return unary_behaviour
