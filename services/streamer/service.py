"""Composition root of the streamer: brokers, the gateway client and the consumer loop."""

from __future__ import annotations

import logging

from modelserve.channels import EndpointSet, follow
from modelserve.server import Runtime
from streamer.brokers import open_sink, open_source
from streamer.events import ModelRef
from streamer.pipeline import Pipeline, PipelineConfig
from streamer.scorer import GatewayScorer
from streamer.settings import StreamerSettings
from streamer.urls import parse

log = logging.getLogger(__name__)


async def build(runtime: Runtime, settings: StreamerSettings) -> None:
    model = ModelRef.parse(settings.stream_model)
    consumer = settings.resolved_consumer()
    dead_letter_url = settings.resolved_dead_letter()
    gateways = EndpointSet(max_message_bytes=settings.max_receive_message_bytes)
    pipeline = Pipeline(
        source=open_source(
            settings.stream_source,
            group=settings.stream_group,
            consumer=consumer,
            reclaim_idle_ms=settings.stream_reclaim_idle_ms,
        ),
        sink=open_sink(
            settings.stream_sink,
            dedupe_ttl_s=settings.stream_dedupe_ttl_seconds,
            maxlen=settings.stream_sink_maxlen,
        ),
        dead_letter=open_sink(
            dead_letter_url,
            dedupe_ttl_s=settings.stream_dedupe_ttl_seconds,
            maxlen=settings.stream_sink_maxlen,
            what="dead-letter",
        ),
        scorer=GatewayScorer(
            gateways=gateways,
            model=model,
            max_attempts=settings.stream_max_attempts,
            call_timeout_s=settings.stream_call_timeout_seconds,
        ),
        config=PipelineConfig(
            group=settings.stream_group,
            consumer=consumer,
            max_batch=settings.stream_max_batch,
            max_wait_s=settings.stream_max_wait_ms / 1000,
            max_in_flight=settings.stream_max_in_flight,
            max_attempts=settings.stream_max_attempts,
            batch_timeout_s=settings.stream_batch_timeout_seconds,
            reclaim_every_s=min(settings.stream_reclaim_idle_ms / 2000, 5.0),
            lag_every_s=settings.stream_lag_interval_seconds,
        ),
    )
    log.info(
        "streaming %s: %s -> %s (dead letters %s), group %s as %s",
        model,
        parse(settings.stream_source).describe(),
        parse(settings.stream_sink).describe(),
        parse(dead_letter_url).describe(),
        settings.stream_group,
        consumer,
    )
    runtime.background(follow(runtime.discovery, "gateway", gateways), "gateway discovery")
    runtime.background(pipeline.run(), "stream consumer")
    runtime.background(pipeline.watch_lag(), "stream lag")
    # SIGTERM: stop reading and finish (write + ack) what is in flight before the server
    # stops; the group is left once nothing of ours is pending.
    runtime.on_drain(pipeline.drain)
    runtime.on_stop(pipeline.close)
    runtime.on_stop(gateways.close)

    async def ready() -> None:
        await pipeline.ready.wait()
        await runtime.set_serving(True)

    runtime.background(ready(), "readiness")
