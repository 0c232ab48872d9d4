"""Per-version figures for canary gates (shared by routers and gateways): every outcome but
the caller's own CANCELLED counts against its version, latencies come from successful calls
only and stay bounded."""

from __future__ import annotations

import grpc

from modelserve.catalog.version_stats import MAX_VERSIONS, RING_SIZE, VersionStats, status_of
from modelserve.errors import InvalidArgumentError, UnavailableError


def test_calls_errors_and_latencies_per_version() -> None:
    stats = VersionStats()
    stats.record("m", 1, 0.002, None)
    stats.record("m", 1, 0.0, grpc.StatusCode.INTERNAL)
    stats.record("m", 1, 0.0, grpc.StatusCode.CANCELLED)  # the caller went away: not counted
    stats.record("m", 2, 0.005, None)
    stats.record("other", 1, 0.001, None)
    report = stats.report("m")
    first, second = report.versions
    assert (first.version, first.requests, first.errors) == (1, 2, 1)
    assert list(first.latency_s) == [0.002] and len(first.ended_unix_ms) == 1
    assert (second.version, second.requests, second.errors) == (2, 1, 0)
    assert stats.report("nothing").versions == []


def test_what_looks_like_the_callers_mistake_counts_as_an_error() -> None:
    """A candidate with another signature fails every caller with INVALID_ARGUMENT; a worker
    without it says NOT_FOUND. Both must show in its error rate (the baseline's share of true
    caller mistakes is counted alike, so the gate's comparison cancels them)."""
    stats = VersionStats()
    for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
    ):
        stats.record("m", 2, 0.0, code)
    (only,) = stats.report("m").versions
    assert (only.requests, only.errors, list(only.latency_s)) == (4, 4, [])


def test_latencies_keep_only_the_latest_calls() -> None:
    stats = VersionStats()
    for i in range(RING_SIZE + 10):
        stats.record("m", 1, float(i), None)
    (only,) = stats.report("m").versions
    assert only.requests == RING_SIZE + 10 and len(only.latency_s) == RING_SIZE
    assert only.latency_s[0] == 10.0


def test_the_number_of_versions_kept_is_bounded() -> None:
    stats = VersionStats()
    for version in range(1, MAX_VERSIONS + 5):
        stats.record("m", version, 0.001, None)
    assert len(stats.report("m").versions) == MAX_VERSIONS


def test_the_status_of_a_failure() -> None:
    assert status_of(UnavailableError("x")) == grpc.StatusCode.UNAVAILABLE
    assert status_of(InvalidArgumentError("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(RuntimeError("x")) == grpc.StatusCode.INTERNAL
