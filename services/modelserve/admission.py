"""Admission: how many RPCs a process takes at once, with health and reflection never counted.

gRPC's own ``maximum_concurrent_rpcs`` counts every RPC, health checks included, so 1,024 idle
ModelStreamInfer streams made a gateway answer RESOURCE_EXHAUSTED to its own health probe.
Here unary calls and streams have separate budgets (an open stream holds a slot for as long as
it lives, so streams cannot take the unary budget), health and reflection pass untouched (the
``BehaviourInterceptor`` skips them), and a refusal says when to come back
(``grpc-retry-pushback-ms``, as gRPC retry throttling reads it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio
from prometheus_client import Counter, Gauge

from modelserve.interceptors import Behaviour, BehaviourInterceptor

REFUSED = Counter(
    "modelserve_rpcs_refused_total",
    "RPCs refused RESOURCE_EXHAUSTED by admission, by kind (unary or stream)",
    ["kind"],
)
IN_FLIGHT = Gauge(
    "modelserve_rpcs_in_flight",
    "RPCs being served now, by kind (unary or stream); health and reflection not counted",
    ["kind"],
)
PUSHBACK_MS = 100  # how long a refused caller should wait before it tries this process again


class AdmissionInterceptor(BehaviourInterceptor):
    def __init__(self, *, max_unary: int, max_streams: int) -> None:
        super().__init__()
        self.max_unary = max_unary
        self.max_streams = max_streams
        self.unary = 0
        self.streams = 0
        # Read when scraped: no per-RPC cost for the gauge.
        IN_FLIGHT.labels("unary").set_function(lambda: self.unary)
        IN_FLIGHT.labels("stream").set_function(lambda: self.streams)

    def wrap(self, method: str, fn: Behaviour, streaming: bool) -> Behaviour:
        if streaming:

            async def stream_behaviour(
                request: Any, context: aio.ServicerContext
            ) -> AsyncIterator[Any]:
                if self.streams >= self.max_streams:
                    await _refuse(context, "stream", self.streams, self.max_streams)
                self.streams += 1
                try:
                    async for item in fn(request, context):
                        yield item
                finally:
                    self.streams -= 1

            return stream_behaviour

        async def unary_behaviour(request: Any, context: aio.ServicerContext) -> Any:
            if self.unary >= self.max_unary:
                await _refuse(context, "unary", self.unary, self.max_unary)
            self.unary += 1
            try:
                return await fn(request, context)
            finally:
                self.unary -= 1

        return unary_behaviour


async def _refuse(context: aio.ServicerContext, kind: str, now: int, limit: int) -> None:
    REFUSED.labels(kind).inc()
    what = "streams" if kind == "stream" else "calls"
    await context.abort(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"server busy: {now} {what} in progress (limit {limit}); retry in {PUSHBACK_MS} ms",
        trailing_metadata=(("grpc-retry-pushback-ms", str(PUSHBACK_MS)),),
    )
