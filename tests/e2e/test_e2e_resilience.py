"""The trimmed fault run of `./dev resilience` (bench/resilience.py), in the default suite:
kill -9 of the registry costs no request (the data plane serves from its replicas), kill -9 of
the single router is ridden out (the gateway's direct lane serves the demo models without it;
any failure is UNAVAILABLE and stops well within the window while the supervisor restarts it),
and 50 ms deadlines only ever see OK or DEADLINE_EXCEEDED. And T29 trimmed: a rolling
restart of both workers (SIGTERM one, wait for the supervisor's replacement to be routed to,
then the other) at 40 requests/s instead of 100."""

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


async def test_rolling_restart_of_every_worker_loses_nothing_and_never_stalls() -> None:
    resilience.ROLLING_RATE[0] = 40.0
    try:
        (outcome,) = await resilience.run(["rolling-restart"], 3.0)
    finally:
        resilience.ROLLING_RATE[0] = 100.0
    # Both workers went down and came back while the load ran.
    assert outcome.note.count(" back in ") == 2, outcome
    assert outcome.sent > 100, outcome
    # T29's bar: >= 99.9 % OK and no second without a success.
    assert resilience.rolling_problems(outcome) == [], outcome
