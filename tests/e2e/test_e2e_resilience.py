"""The trimmed fault run of `./dev resilience` (bench/resilience.py), in the default suite:
kill -9 of the registry costs no request (the data plane serves from its replicas), kill -9 of
the single router is ridden out (the gateway's direct lane serves the demo models without it;
any failure is UNAVAILABLE and stops well within the window while the supervisor restarts it),
and 50 ms deadlines only ever see OK or DEADLINE_EXCEEDED."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import resilience

SECONDS = 5.0


async def test_trimmed_fault_run() -> None:
    outcomes = {
        o.scenario: o
        for o in await resilience.run(["kill9-registry", "kill9-router", "deadline-50ms"], SECONDS)
    }
    registry = outcomes["kill9-registry"]
    assert registry.sent > 100 and registry.failed == {}, registry
    router = outcomes["kill9-router"]
    assert router.ok > 100 and set(router.failed) <= {"UNAVAILABLE"}, router
    assert router.recovery_s < SECONDS - 2, router  # back long before the load ends
    deadlines = outcomes["deadline-50ms"]
    assert set(deadlines.failed) <= {"DEADLINE_EXCEEDED"} and deadlines.ok > 0, deadlines
