"""Per-version figures for canary gates: the caller's mistakes are not counted, failures are,
latencies come from successful calls only and stay bounded."""

from __future__ import annotations

import grpc

from modelserve.errors import InvalidArgumentError, UnavailableError
from router.version_stats import RING_SIZE, VersionStats, status_of


def test_calls_errors_and_latencies_per_version() -> None:
    stats = VersionStats()
    stats.record("m", 1, 0.002, None)
    stats.record("m", 1, 0.0, grpc.StatusCode.INTERNAL)
    stats.record("m", 1, 0.0, grpc.StatusCode.INVALID_ARGUMENT)  # the caller's mistake
    stats.record("m", 1, 0.0, grpc.StatusCode.CANCELLED)
    stats.record("m", 2, 0.005, None)
    stats.record("other", 1, 0.001, None)
    report = stats.report("m")
    first, second = report.versions
    assert (first.version, first.requests, first.errors) == (1, 2, 1)
    assert list(first.latency_s) == [0.002] and len(first.ended_unix_ms) == 1
    assert (second.version, second.requests, second.errors) == (2, 1, 0)


def test_latencies_keep_only_the_latest_calls() -> None:
    stats = VersionStats()
    for i in range(RING_SIZE + 10):
        stats.record("m", 1, float(i), None)
    (only,) = stats.report("m").versions
    assert only.requests == RING_SIZE + 10 and len(only.latency_s) == RING_SIZE
    assert only.latency_s[0] == 10.0


def test_the_status_of_a_failure() -> None:
    assert status_of(UnavailableError("x")) == grpc.StatusCode.UNAVAILABLE
    assert status_of(InvalidArgumentError("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(RuntimeError("x")) == grpc.StatusCode.INTERNAL
