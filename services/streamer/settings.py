"""Streamer settings: one consumer of one event stream, scoring through the gateway.

The stream fields are named ``stream_*`` so their variables read ``MODELSERVE_STREAM_*``;
``modelserve stream run`` maps its short flags (``--source``) onto them.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from modelserve.errors import ModelServeError
from modelserve.server import dependency
from modelserve.settings import CommonSettings, SettingsError, setting
from streamer.urls import dead_letter_default, parse

SCHEMES = ("redis", "rediss", "nats")


@dataclass
class StreamerSettings(CommonSettings):
    port: int = setting(8501, "gRPC port (grpc.health.v1 and reflection only).")
    gateway_addr: str = dependency(
        "gateway", "127.0.0.1:8001", "Gateway address(es), comma-separated (static discovery)."
    )
    stream_model: str = setting(
        "", "Model to score, MODEL[:VERSION|@LABEL] (required); no version = routing policy."
    )
    stream_source: str = setting(
        "",
        "Event stream (required): redis://HOST:PORT/DB?stream=NAME or "
        "nats://HOST:PORT?stream=NAME&subject=SUBJ.",
    )
    stream_sink: str = setting(
        "", "Result stream (required), same URL forms; Redis accepts &maxlen=N (approximate)."
    )
    stream_dead_letter: str = setting(
        "", "Dead-letter stream for poison events, same URL forms (default: sink stream + '.dlq')."
    )
    stream_group: str = setting("", "Consumer group (Redis) / durable consumer (NATS); required.")
    stream_consumer: str = setting(
        "", "This consumer's name in the group (default: hostname-pid); unique per process."
    )
    stream_max_batch: int = setting(32, "Events read and scored together (micro-batch size).")
    stream_max_wait_ms: int = setting(
        5, "Once an event is read, wait at most this long for the batch to fill."
    )
    stream_max_in_flight: int = setting(
        4, "Batches scored at once; reading stops while this many are unfinished."
    )
    stream_max_attempts: int = setting(
        3,
        "Gateway attempts per event on transient errors (UNAVAILABLE, DEADLINE_EXCEEDED, "
        "RESOURCE_EXHAUSTED), and deliveries of an event before it is dead-lettered unscored.",
    )
    stream_batch_timeout_seconds: float = setting(
        10.0, "Deadline of one batch: every gateway call and retry of it, and the sink write."
    )
    stream_call_timeout_seconds: float = setting(
        2.0, "Deadline of one gateway call (within the batch deadline)."
    )
    stream_reclaim_idle_ms: int = setting(
        30_000,
        "Redis: pending entries idle this long (their consumer died) are claimed by another "
        "consumer (XAUTOCLAIM). NATS: the consumer's ack wait (redelivery after this long).",
    )
    stream_dedupe_ttl_seconds: int = setting(
        3600,
        "Dedupe window: a result written for an event id is remembered this long, so a "
        "redelivery never writes a second result (Redis key TTL; NATS duplicate_window).",
    )
    stream_sink_maxlen: int = setting(
        1_000_000, "Redis sinks: approximate MAXLEN of the result and dead-letter streams."
    )
    stream_lag_interval_seconds: float = setting(
        1.0, "How often consumer lag (pending + not yet delivered) is read from the broker."
    )

    def resolved_consumer(self) -> str:
        return self.stream_consumer or f"{socket.gethostname()}-{os.getpid()}"

    def resolved_dead_letter(self) -> str:
        if self.stream_dead_letter:
            return self.stream_dead_letter
        return dead_letter_default(self.stream_sink)

    def validate(self) -> None:
        super().validate()
        for name in ("stream_model", "stream_source", "stream_sink", "stream_group"):
            if not getattr(self, name):
                raise SettingsError(
                    f"{name} is required (MODELSERVE_{name.upper()} or --{name.replace('_', '-')})"
                )
        for name in ("stream_source", "stream_sink", "stream_dead_letter"):
            url = getattr(self, name)
            if url and url.partition("://")[0] not in SCHEMES:
                raise SettingsError(
                    f"{name} must start with redis://, rediss:// or nats://; got {url!r}"
                )
            if url:
                parse(url, name)  # ?stream= and the scheme's own parameters
        from streamer.events import ModelRef  # numpy and protos: only once the rest is sane

        try:
            ModelRef.parse(self.stream_model)
        except ModelServeError as exc:
            raise SettingsError(f"stream_model: {exc.message}") from None
        positive = ("stream_max_batch", "stream_max_in_flight", "stream_max_attempts")
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.stream_max_batch > 1024:
            raise SettingsError(
                f"stream_max_batch must be at most 1024; got {self.stream_max_batch}"
            )
        if self.stream_max_wait_ms < 0 or self.stream_batch_timeout_seconds <= 0:
            raise SettingsError("stream_max_wait_ms must be >= 0 and batch timeout > 0")
