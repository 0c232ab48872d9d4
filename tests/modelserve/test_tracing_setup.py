"""Tracing set-up, each case in a fresh interpreter (a tracer provider is global and set
once per process): OTEL_TRACES_SAMPLER is honoured, Redis calls become spans, and with the
exporter ``none`` no client interceptor is put on channels (tracing off costs nothing)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import redis


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_otel_traces_sampler_from_the_environment_wins() -> None:
    done = run(
        """
        from opentelemetry import trace
        from modelserve.tracing import configure_tracing
        configure_tracing("t", "console", sample_ratio=1.0)
        print(trace.get_tracer_provider().sampler.get_description())
        """,
        OTEL_TRACES_SAMPLER="always_off",
    )
    assert done.returncode == 0, done.stderr
    assert "AlwaysOffSampler" in done.stdout


def test_redis_calls_are_spans() -> None:
    try:
        redis.Redis(socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    done = run(
        """
        import asyncio, redis.asyncio
        from modelserve.tracing import configure_tracing
        configure_tracing("t", "console")
        async def main():
            client = redis.asyncio.Redis()
            await client.ping()
            await client.aclose()
        asyncio.run(main())
        """
    )
    assert done.returncode == 0, done.stderr
    assert '"name": "PING"' in done.stdout and '"db.system": "redis"' in done.stdout


def test_no_client_interceptor_while_tracing_is_off() -> None:
    done = run(
        """
        import asyncio
        from modelserve import tracing
        from modelserve.channels import internal_channel
        async def main():
            channel = internal_channel("127.0.0.1:1")
            print("interceptors", tracing.client_interceptors(), channel._unary_unary_interceptors)
            await channel.close()
        asyncio.run(main())
        """
    )
    assert done.returncode == 0, done.stderr
    assert "interceptors [] []" in done.stdout
