"""The trimmed fault run of `./dev resilience` (bench/resilience.py), in the default suite:
kill -9 of the registry costs no request (the data plane serves from its replicas), kill -9 of
the single router is ridden out (the gateway's direct lane serves the demo models without it;
any failure is UNAVAILABLE and stops well within the window while the supervisor restarts it),
and 50 ms deadlines only ever see OK or DEADLINE_EXCEEDED. And T29 trimmed: a rolling
restart of both workers (SIGTERM one, wait for the supervisor's replacement to be routed to,
then the other) at 40 requests/s instead of 100. And T30 trimmed: kill -9 of one of three
workers under a paced 100 requests/s, the load running until the replacement serves. And T32
trimmed: the suite on Consul discovery against the stand-in agent, which goes away for 3 s
(not 60) under 100 requests/s and comes back without its state."""

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


async def test_kill9_of_one_of_three_workers_at_100_rps_costs_at_most_its_in_flight() -> None:
    """T30: three workers, 100 requests/s paced through the gateway; a second in, worker1 gets
    kill -9. What was in flight on it may fail (target 0: the hop retries UNAVAILABLE on
    another worker); it leaves routing at once; the supervisor's replacement is routed to
    (fraud READY) within 30 s. The load runs until then, plus a second."""
    assert resilience.ROLLING_RATE[0] == 100.0
    (outcome,) = await resilience.run(["kill9-worker"], 4.0, workers=3)
    assert outcome.sent >= 400, outcome  # ~100/s for >= 4 s
    assert outcome.in_flight_at_fault >= 0, outcome
    # The case's bounds (resilience.kill9_problems): failures <= in flight on the victim,
    # replacement serving <= 30 s.
    assert resilience.kill9_problems(outcome) == [], outcome
    # Ejected: out of the router's routing within a second of the kill (its status stream
    # breaks; the <= 5 consecutive failures rule is unit-tested in test_runtime_channels).
    assert 0 <= outcome.out_s <= 1.0, outcome
    # Every process, worker1 and worker2 too, stopped cleanly on SIGTERM at the end.
    assert resilience.LAST_STOP_CODES and set(resilience.LAST_STOP_CODES.values()) == {0}, (
        resilience.LAST_STOP_CODES
    )


async def test_a_consul_agent_outage_under_load_fails_nothing_and_flaps_nothing() -> None:
    """T32, trimmed (3 s outage, reconcile every 1 s). What is the stand-in: the Consul agent
    (tests/fakes/consul_agent.py, an HTTP server speaking the agent API that runs real gRPC
    health checks against the services). What is real: every service as its own process on
    Consul discovery (register, watch, reconcile) and the paced load through the gateway.
    The agent stops, then comes back on its port without its state (a dev agent, a lost data
    dir): routing goes on from the last-known sets (0 failures), the router's worker set never
    changes (no flapping), every registration is back and passing <= 30 s after the return."""
    resilience.CONSUL_OUTAGE_S[0] = 3.0
    try:
        (outcome,) = await resilience.run(["consul-outage"], 2.0, consul=True, reconcile_s=1.0)
    finally:
        resilience.CONSUL_OUTAGE_S[0] = 60.0
    assert outcome.sent >= 400, outcome  # >= 1 + 3 + 1 s at 100/s
    assert " 6 registrations back" in outcome.note, outcome  # every service, both workers
    assert resilience.consul_problems(outcome) == [], outcome
    assert set(resilience.LAST_STOP_CODES.values()) == {0}, resilience.LAST_STOP_CODES
