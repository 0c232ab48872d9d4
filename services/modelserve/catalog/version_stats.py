"""Calls, errors and recent latencies per (model, version): what the registry's canary
controller compares between a baseline and a candidate.

Two processes count, each what only it sees, so no call is counted twice:
- a router counts every routed call it answered for a version (``RouterControl.VersionStats``);
- a gateway counts the requests it rejected after deciding their version (a request that fails
  the version's signature never reaches a router; ``GatewayControl.VersionStats``).

Every outcome counts against its version except CANCELLED (the caller went away: it says
nothing about the version). INVALID_ARGUMENT and NOT_FOUND count as errors too: a candidate
whose signature differs from its baseline's fails the callers' requests as surely as one that
crashes. The gates compare the candidate's error rate with the baseline's, so the caller's own
mistakes, which hit both arms alike, cancel out.

Counters are cumulative since the process started (the reader keeps its own starting point);
latencies are a ring of the latest successful calls with the time each ended, so a reader can
take the p99 of exactly the calls since a step began, with memory fixed per version.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import grpc
from prometheus_client import Counter

from modelserve.proto.modelserve.v1 import router_pb2

# The same counts the canary gates read, so a canary decision can be reproduced in Prometheus
# (sum the gateway's rejections and the routers' calls per version, as the controller does).
CANARY_CALLS = Counter(
    "modelserve_canary_version_calls_total",
    "Calls counted per model version for canary gates, by the counting service and outcome "
    "(ok, error); CANCELLED is not counted",
    ["service", "model", "version", "outcome"],
)

RING_SIZE = 2048  # latest successful calls per version; p99 over 2048 is a 20-call tail
MAX_VERSIONS = 1024  # distinct (model, version) kept; more is churn, not a canary

# Only the caller's own going away says nothing about the version that answered.
UNCOUNTED_CODES = frozenset({grpc.StatusCode.CANCELLED})


@dataclass
class _Counts:
    requests: int = 0
    errors: int = 0
    latencies: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=RING_SIZE))


class VersionStats:
    def __init__(self, service: str = "") -> None:
        self._by_version: dict[tuple[str, int], _Counts] = {}
        self._service = service  # "" (tests): no Prometheus series

    def record(
        self, model: str, version: int, seconds: float, code: grpc.StatusCode | None
    ) -> None:
        """One call of ``version`` ended; ``code`` None means OK."""
        if code in UNCOUNTED_CODES:
            return
        key = (model, version)
        counts = self._by_version.get(key)
        if counts is None:
            if len(self._by_version) >= MAX_VERSIONS:
                return
            counts = self._by_version[key] = _Counts()
        counts.requests += 1
        if code is None:
            counts.latencies.append((seconds, int(time.time() * 1000)))
        else:
            counts.errors += 1
        if self._service:
            outcome = "ok" if code is None else "error"
            CANARY_CALLS.labels(self._service, model, str(version), outcome).inc()

    def report(self, model: str) -> router_pb2.VersionStatsResponse:
        answer = router_pb2.VersionStatsResponse()
        for (name, version), counts in sorted(self._by_version.items()):
            if name != model:
                continue
            answer.versions.add(
                version=version,
                requests=counts.requests,
                errors=counts.errors,
                latency_s=[s for s, _ in counts.latencies],
                ended_unix_ms=[t for _, t in counts.latencies],
            )
        return answer


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status a failed call ends with (domain errors and RpcErrors carry one)."""
    code = getattr(exc, "code", None)
    if isinstance(code, grpc.StatusCode):
        return code
    if callable(code):
        found = code()
        if isinstance(found, grpc.StatusCode):
            return found
    return grpc.StatusCode.INTERNAL
