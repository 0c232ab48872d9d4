"""OpenTelemetry tracing across every hop: W3C trace context rides in gRPC metadata.

``configure_tracing`` installs a tracer provider from settings (exporter none/console/otlp,
honouring OTEL_* variables, OTEL_TRACES_SAMPLER/_ARG included). Spans come from the
OpenTelemetry gRPC instrumentation's conventions: ``ServerSpans`` (a behaviour wrapped at
registration) opens a SERVER span per RPC whose parent is the caller's ``traceparent``; the
hops' own calls (``calls.Hop`` / ``fan_out`` on ``Endpoint.hot_stub``) open a CLIENT span per
attempt when the current span records (``start_client_span``) and inject the context either
way; everything else (watch and status streams, artifact fetches) goes through the
instrumentation's client interceptors on the channel. The worker adds queue-wait and
model-run spans (``stage_spans``) and Redis calls are traced by the Redis instrumentation;
``http_server_span`` is the REST face's SERVER span. With the exporter ``none`` nothing is
installed: no interceptor runs, so tracing off costs nothing. Spans never carry tensors or
feature values (RELIABILITY.md, Tracing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import grpc
from grpc import aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import (
    aio_client_interceptors,
    aio_server_interceptor,
    filters,
)
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
    sampler: str = "",
) -> bool:
    """Install the global tracer provider. Returns False (and installs nothing) for "none".

    ``span_exporter`` lets tests pass an in-memory exporter.
    """
    if exporter == "none" and span_exporter is None:
        return False
    # A sampler named by the operator (trace_sampler / OTEL_TRACES_SAMPLER, its argument
    # trace_sample_ratio / OTEL_TRACES_SAMPLER_ARG) is built by the SDK, which reads the two
    # variables when no sampler is given. Otherwise parent-based with the configured ratio.
    if sampler:
        os.environ["OTEL_TRACES_SAMPLER"] = sampler
        os.environ.setdefault("OTEL_TRACES_SAMPLER_ARG", str(sample_ratio))
    from_env = bool(os.environ.get("OTEL_TRACES_SAMPLER"))
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=None if from_env else ParentBasedTraceIdRatio(sample_ratio),
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
    _instrument_redis()
    log.info(
        "tracing on: exporter=%s sampler=%s",
        exporter,
        os.environ["OTEL_TRACES_SAMPLER"] if from_env else f"parentbased ratio {sample_ratio}",
    )
    return True


def _instrument_redis() -> None:
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    instrumentor = RedisInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def enabled() -> bool:
    return _enabled


# Health and reflection are probes, not requests: no spans for them.
def _not_probes() -> Any:
    return filters.negate(
        filters.any_of(
            filters.service_prefix("grpc.health.v1"), filters.service_prefix("grpc.reflection")
        )
    )


def server_interceptor() -> aio.ServerInterceptor:
    """The instrumentation's SERVER-span interceptor. The runtime wraps ``ServerSpans``
    around its handlers instead (same spans, no per-RPC interceptor chain); this stays for
    bare servers."""
    interceptor: aio.ServerInterceptor = aio_server_interceptor(filter_=_not_probes())
    return interceptor


class ServerSpans(BehaviourInterceptor):
    """SERVER spans as the OpenTelemetry gRPC instrumentation makes them (named after the full
    method, kind SERVER, ``rpc.system``/``rpc.service``/``rpc.method``,
    ``rpc.grpc.status_code``, status ERROR on a failure, the caller's W3C context as parent),
    wrapped around each handler at registration like the other behaviours.

    Why not the instrumentation's interceptor: with a parent-based 1 % sampler it cost the
    suite ~30 % of its c=64 throughput (bench/production_costs.py), most of it per RPC for
    the 99 % of calls that record nothing (an interceptor chain per call, a new handler
    wrapped per call, peer-address parsing). Here an unsampled call costs the context
    extraction and a non-recording span; attributes are only built for recording spans.
    Health and reflection are skipped, as the probe filter did. The hops' CLIENT spans
    come from ``start_client_span`` (same reasons: an interceptor per call cost a task and
    callbacks per call, sampled or not)."""

    def __init__(self) -> None:
        super().__init__()
        self._tracer = trace.get_tracer("modelserve.grpc.server")

    def wrap(self, method: str, fn: Behaviour, streaming: bool) -> Behaviour:
        service, _, name = method.lstrip("/").rpartition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        tracer = self._tracer

        def begin(context: aio.ServicerContext) -> Any:
            carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            return tracer.start_as_current_span(
                method,
                context=propagate.extract(carrier),
                kind=SpanKind.SERVER,
                record_exception=False,
                set_status_on_exception=False,
            )

        def end(span: Any, context: aio.ServicerContext, failure: BaseException | None) -> None:
            if not span.is_recording():
                return
            code = context.code()
            if not isinstance(code, grpc.StatusCode):
                code = grpc.StatusCode.OK if failure is None else _status_of(failure)
            span.set_attributes(attributes)
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code != grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, f"{code.name}"))

        if streaming:

            async def stream_behaviour(
                request: Any, context: aio.ServicerContext
            ) -> AsyncIterator[Any]:
                with begin(context) as span:
                    failure: BaseException | None = None
                    try:
                        async for item in fn(request, context):
                            yield item
                    except BaseException as exc:
                        failure = exc
                        raise
                    finally:
                        end(span, context, failure)

            return stream_behaviour

        async def unary_behaviour(request: Any, context: aio.ServicerContext) -> Any:
            with begin(context) as span:
                failure: BaseException | None = None
                try:
                    return await fn(request, context)
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    end(span, context, failure)

        return unary_behaviour


def _status_of(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = getattr(exc, "code", None)
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN


def client_interceptors() -> list[aio.ClientInterceptor]:
    """CLIENT-span interceptors for a new channel; none while tracing is off."""
    if not _enabled:
        return []
    return list(aio_client_interceptors(filter_=_not_probes()))


def stage_spans(stages: Sequence[tuple[str, int]], end_ns: int, **attributes: Any) -> None:
    """Record consecutive INTERNAL child spans of the current span, the last ending at
    ``end_ns`` (epoch ns): e.g. a request's queue wait then its model run, measured by the
    batcher, which runs batches outside any one request's context."""
    if not _enabled:
        return
    tracer = trace.get_tracer("modelserve.stages")
    start = end_ns - sum(d for _, d in stages)
    for name, duration in stages:
        span = tracer.start_span(name, start_time=start, attributes=attributes)
        span.end(end_time=start + duration)
        start += duration


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def note(name: str, value: float) -> None:
    """Set ``name`` on the current span when tracing is on (the deadline each hop saw and the
    timeout it sent on, so one trace shows the budget shrinking hop by hop: T10)."""
    if _enabled:
        trace.get_current_span().set_attribute(name, round(value, 3))


def outbound_metadata(extra: Metadata = ()) -> list[tuple[str, str | bytes]]:
    """Metadata for an outbound call on an intercepted channel. The trace context is added by
    the channel's client interceptor (with its CLIENT span as the parent), not here."""
    return list(extra)


_client_tracer: trace.Tracer | None = None


def start_client_span(method: str) -> tuple[Any, list[tuple[str, str]]]:
    """For a call made without the client interceptors (``calls.Hop`` on a hot stub): a CLIENT
    span named after the full method, as the instrumentation's, when the current span is
    recording, and the W3C context to send (the CLIENT span's, else the current one, so an
    unsampled trace stays unsampled downstream). Returns (span or None, metadata). Call only
    while ``enabled()``; end the span with ``end_client_span``."""
    global _client_tracer
    current = trace.get_current_span()
    carrier: dict[str, str] = {}
    if not current.is_recording():
        propagate.inject(carrier)
        return None, list(carrier.items())
    if _client_tracer is None:
        _client_tracer = trace.get_tracer("modelserve.grpc.client")
    service, _, name = method.lstrip("/").rpartition("/")
    span = _client_tracer.start_span(
        method,
        kind=SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return span, list(carrier.items())


def end_client_span(span: Any, code: grpc.StatusCode) -> None:
    if span is None:
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code != grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


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
