"""The canary controller against a real RegistryStore and CanaryStore, with router figures
fed in by a fake reader: a good candidate steps up to 100%, an erroring or slow one is rolled
back at once, one that loses on its business metric too, a step short of evidence past its
longest duration as well, and every decision is recorded with its numbers. The gates
themselves (pure) are tested at the end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from registry_testkit import FRAUD_V1, FRAUD_V2, open_store, push_direct

from modelserve.catalog import routing
from modelserve.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from modelserve.proto.modelserve.v1 import canary_pb2, router_pb2
from registry.canary.controller import CanaryController
from registry.canary.gates import (
    Arm,
    CanarySpec,
    check_spec,
    default_max_step_s,
    evaluate,
    metric_figures,
    p99,
)
from registry.canary.reader import Reading, RouterFigures
from registry.canary.servicer import spec_from_proto
from registry.canary.store import CanaryStore, arm_of_key
from registry.experiments import sequential_test as st
from registry.store import RegistryStore

pytestmark = pytest.mark.usefixtures("database_url")


@dataclass
class Version:
    requests: int = 0
    errors: int = 0
    latencies: list[tuple[float, int]] = field(default_factory=list)


class FakeRouter:
    """Cumulative per-version figures, as a router's VersionStats reports them."""

    def __init__(self) -> None:
        self.ready = True
        self.versions: dict[int, Version] = {1: Version(), 2: Version()}

    def serve(self, version: int, calls: int, errors: int = 0, latency_s: float = 0.001) -> None:
        figures = self.versions[version]
        figures.requests += calls
        figures.errors += errors
        now = int(time.time() * 1000) + 1  # after the window that counts them began
        figures.latencies += [(latency_s, now)] * (calls - errors)

    async def __call__(self, spec: CanarySpec) -> Reading:
        stats = router_pb2.VersionStatsResponse()
        for number, v in self.versions.items():
            stats.versions.add(
                version=number,
                requests=v.requests,
                errors=v.errors,
                latency_s=[s for s, _ in v.latencies],
                ended_unix_ms=[t for _, t in v.latencies],
            )
        figures = {"router-a": RouterFigures(stats)}
        return Reading(spec.baseline, spec.candidate, figures, self.ready)


Parts = tuple[CanaryController, RegistryStore, FakeRouter]


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    store = open_store(tmp_path / "data")
    push_direct(store, "fraud", FRAUD_V1, labels=["production"])
    push_direct(store, "fraud", FRAUD_V2)
    executor = ThreadPoolExecutor(1)
    canaries = CanaryStore(tmp_path / "canaries.sqlite3", database_url=store.database_url)
    router = FakeRouter()
    controller = CanaryController(
        store=store, canaries=canaries, store_executor=executor, read=router
    )
    yield controller, store, router
    executor.submit(canaries.close).result()
    executor.shutdown()
    store.close()


def spec(**overrides: object) -> CanarySpec:
    values: dict[str, object] = {
        "model": "fraud",
        "baseline": 1,
        "candidate": 2,
        "steps": (10.0, 50.0, 100.0),
        "min_requests": 20,
        "min_seconds": 0.0,
    }
    return CanarySpec(**{**values, **overrides})  # type: ignore[arg-type]


def split_of(store: RegistryStore) -> dict[int, int]:
    policy = store.get_model("fraud").policy
    assert policy is not None
    return {s.version: s.basis_points for s in policy.policy.split}


async def test_a_good_candidate_steps_up_to_100_percent(parts: Parts) -> None:
    controller, store, router = parts
    started = await controller.start(spec())
    assert started.state == "running" and split_of(store) == {1: 9000, 2: 1000}
    await controller.tick()  # the candidate is ready: the first step starts counting now
    router.serve(1, 90)
    router.serve(2, 10)
    await controller.tick()
    assert (await controller.status("fraud")).decisions[-1].action == "wait"  # 10 < 20 calls
    router.serve(2, 15)
    await controller.tick()
    assert split_of(store) == {1: 5000, 2: 5000}
    router.serve(1, 30)
    router.serve(2, 30)
    await controller.tick()
    status = await controller.status("fraud")
    assert status.state == "promoted" and split_of(store) == {2: 10_000}
    assert [d.action for d in status.decisions] == ["start", "wait", "advance", "promote"]
    advance = status.decisions[2]
    assert advance.candidate == Arm(2, 25, 0, 0.001) and advance.baseline.requests == 90
    assert store.policy_history("fraud", 0)[-1].note.startswith("canary promote")


async def test_a_candidate_that_fails_is_rolled_back_with_its_numbers(parts: Parts) -> None:
    controller, store, router = parts
    await controller.start(spec(max_error_rate_delta=0.05))
    await controller.tick()
    router.serve(1, 200, errors=1)
    router.serve(2, 20, errors=4)
    await controller.tick()
    status = await controller.status("fraud")
    assert status.state == "rolled_back" and split_of(store) == {1: 10_000}
    last = status.decisions[-1]
    assert last.action == "rollback" and last.candidate.errors == 4
    assert last.candidate.requests == 20 and last.baseline.errors == 1
    assert "error rate 0.2000" in last.reason
    await controller.tick()  # nothing runs any more: no new decision
    assert len((await controller.status("fraud")).decisions) == len(status.decisions)


async def test_a_slow_candidate_is_rolled_back(parts: Parts) -> None:
    controller, store, router = parts
    await controller.start(spec(max_p99_ratio=2.0))
    await controller.tick()
    router.serve(1, 50, latency_s=0.002)
    router.serve(2, 50, latency_s=0.010)
    await controller.tick()
    status = await controller.status("fraud")
    assert status.state == "rolled_back" and "p99 10.00 ms" in status.decisions[-1].reason
    assert split_of(store) == {1: 10_000}


async def test_a_candidate_no_worker_holds_is_rolled_back_after_the_ready_timeout(
    parts: Parts,
) -> None:
    controller, _, router = parts
    router.ready = False
    await controller.start(spec(ready_timeout_s=0.05))
    await controller.tick()
    await asyncio.sleep(0.06)
    await controller.tick()
    status = await controller.status("fraud")
    assert (
        status.state == "rolled_back" and "no worker held version 2" in status.decisions[-1].reason
    )


async def test_start_checks_and_abort(parts: Parts) -> None:
    controller, store, _ = parts
    with pytest.raises(NotFoundError):
        await controller.start(spec(candidate=7))
    await controller.start(spec())
    with pytest.raises(FailedPreconditionError, match="already has a running canary"):
        await controller.start(spec())
    aborted = await controller.abort("fraud")
    assert aborted.state == "aborted" and split_of(store) == {1: 10_000}
    with pytest.raises(FailedPreconditionError):
        await controller.abort("fraud")
    with pytest.raises(NotFoundError):
        await controller.status("nothing")


@pytest.mark.parametrize(
    "steps",
    [(), (100.0,), (5.0, 50.0), (50.0, 5.0, 100.0), (0.0, 100.0), (5.0, 100.5), (5.123, 100.0)],
)
def test_invalid_steps_are_refused(steps: tuple[float, ...]) -> None:
    with pytest.raises(InvalidArgumentError):
        check_spec(spec(steps=steps))


def test_gates_wait_for_calls_and_time_then_pass() -> None:
    s = spec(min_seconds=5.0)
    assert evaluate(s, 0, 10, Arm(1, 100), Arm(2, 19)).action == "wait"
    assert evaluate(s, 0, 1, Arm(1, 100), Arm(2, 20)).action == "wait"
    assert evaluate(s, 0, 6, Arm(1, 100), Arm(2, 20)).action == "advance"
    assert evaluate(s, 1, 6, Arm(1, 100), Arm(2, 20)).action == "promote"
    # Within the error delta passes; beyond it rolls back even before min_seconds.
    assert evaluate(s, 0, 6, Arm(1, 100, 1), Arm(2, 50, 1)).action == "advance"
    assert evaluate(s, 0, 1, Arm(1, 100, 0), Arm(2, 50, 2)).action == "rollback"
    assert p99([]) == 0.0 and p99([float(i) for i in range(1, 101)]) == 99.0


def test_missing_evidence_past_the_longest_step_is_a_rollback_with_the_numbers() -> None:
    s = spec(min_requests=100, min_seconds=5.0, max_step_s=30.0)
    assert evaluate(s, 0, 29, Arm(1, 3458), Arm(2, 0)).action == "wait"
    verdict = evaluate(s, 0, 30, Arm(1, 3458), Arm(2, 0))
    assert verdict.action == "rollback"
    assert verdict.reason.startswith("step ran 30 s with baseline 3458, candidate 0 calls")
    assert "needs 100 each" in verdict.reason
    # Enough calls and passing gates: the longest step does not matter.
    assert evaluate(s, 0, 40, Arm(1, 3458), Arm(2, 100)).action == "advance"


def test_the_longest_step_is_checked_and_defaulted() -> None:
    with pytest.raises(InvalidArgumentError, match="max_step_seconds"):
        check_spec(spec(min_seconds=10.0, max_step_s=5.0))
    check_spec(spec(min_seconds=10.0, max_step_s=10.0))
    defaulted = spec_from_proto(canary_pb2.CanarySpec(model="m", min_seconds=900))
    assert defaulted.max_step_s == 900 and default_max_step_s(0) == 600
    assert spec_from_proto(canary_pb2.CanarySpec(model="m")).max_step_s == 600


async def test_a_step_without_enough_calls_is_rolled_back_after_the_longest_step(
    parts: Parts,
) -> None:
    controller, store, router = parts
    await controller.start(spec(max_step_s=0.05))
    await controller.tick()  # ready: the step starts counting
    router.serve(1, 30)
    router.serve(2, 3)
    await controller.tick()
    assert (await controller.status("fraud")).decisions[-1].action == "wait"
    await asyncio.sleep(0.06)
    await controller.tick()
    status = await controller.status("fraud")
    assert status.state == "rolled_back" and split_of(store) == {1: 10_000}
    last = status.decisions[-1]
    assert "with baseline 30, candidate 3 calls; needs 20 each" in last.reason, last
    assert last.step_seconds >= 0.05


def moments(values: list[float]) -> st.Moments:
    found = st.Moments()
    for value in values:
        found = found.add(value)
    return found


def clicks(rate_in_20: int, n: int) -> list[float]:
    """``n`` outcomes, ``rate_in_20`` clicks in every 20 (evenly spread)."""
    return [1.0 if i % 20 < rate_in_20 else 0.0 for i in range(n)]


def test_a_candidate_that_loses_on_the_business_metric_is_rolled_back() -> None:
    s = spec(business_metric="ctr")
    base, cand = Arm(1, 100), Arm(2, 100)
    losing = metric_figures(s, moments(clicks(6, 200)), moments(clicks(1, 200)))
    assert losing.p_value < 0.05 and losing.difference == pytest.approx(-0.25)
    verdict = evaluate(s, 0, 10, base, cand, losing)
    assert verdict.action == "rollback" and "candidate loses on ctr" in verdict.reason
    assert "candidate 0.0500 (n=200) vs baseline 0.3000 (n=200)" in verdict.reason
    # A significant loss needs no calls: it is evidence on its own.
    assert evaluate(s, 0, 10, Arm(1), Arm(2), losing).action == "rollback"
    # The same numbers win where lower is better.
    lower = spec(business_metric="ctr", lower_is_better=True)
    assert evaluate(lower, 0, 10, base, cand, losing).action == "advance"
    # A stricter alpha does not find this difference yet.
    strict = spec(business_metric="ctr", business_alpha=1e-9)
    assert evaluate(strict, 0, 10, base, cand, metric_figures(strict, *_arms(200))).action == (
        "advance"
    )


def _arms(n: int) -> tuple[st.Moments, st.Moments]:
    return moments(clicks(6, n)), moments(clicks(1, n))


def test_a_step_with_a_business_metric_waits_for_outcomes_then_times_out() -> None:
    s = spec(business_metric="ctr", max_step_s=30.0)
    base, cand = Arm(1, 100), Arm(2, 100)
    few = metric_figures(s, moments(clicks(6, 200)), moments(clicks(6, st.MIN_COUNT - 1)))
    waiting = evaluate(s, 0, 10, base, cand, few)
    assert waiting.action == "wait" and f"needs {st.MIN_COUNT} ctr outcomes" in waiting.reason
    late = evaluate(s, 0, 31, base, cand, few)
    assert late.action == "rollback"
    assert "with ctr outcomes baseline 200, candidate 29; needs 30 each" in late.reason
    even = metric_figures(s, moments(clicks(6, 60)), moments(clicks(6, 60)))
    passed = evaluate(s, 0, 10, base, cand, even)
    assert passed.action == "advance" and "ctr candidate 0.3000 (n=60)" in passed.reason
    # The running minimum p-value of earlier looks stays.
    assert metric_figures(s, moments(clicks(6, 60)), moments(clicks(6, 60)), 0.01).p_value == 0.01


def test_a_business_metric_must_be_a_name_and_alpha_a_probability() -> None:
    with pytest.raises(InvalidArgumentError, match="business_metric"):
        check_spec(spec(business_metric="no spaces"))
    with pytest.raises(InvalidArgumentError, match="business_alpha"):
        check_spec(spec(business_metric="ctr", business_alpha=1.0))
    check_spec(spec(business_metric="ctr"))


async def test_outcomes_feed_the_business_gate_and_the_decisions(parts: Parts) -> None:
    controller, store, router = parts
    await controller.start(spec(business_metric="ctr"))
    with pytest.raises(InvalidArgumentError, match="judges 'ctr'"):
        await controller.record_outcome("fraud", 2, "", "revenue", 1.0)
    with pytest.raises(InvalidArgumentError, match="compares versions 1 and 2"):
        await controller.record_outcome("fraud", 3, "", "ctr", 1.0)
    with pytest.raises(InvalidArgumentError, match="not both"):
        await controller.record_outcome("fraud", 2, "user-1", "ctr", 1.0)
    with pytest.raises(InvalidArgumentError, match="finite"):
        await controller.record_outcome("fraud", 2, "", "ctr", float("nan"))
    await controller.tick()
    router.serve(1, 100)
    router.serve(2, 100)
    await controller.tick()
    waiting = (await controller.status("fraud")).decisions[-1]
    assert waiting.action == "wait" and "needs 30 ctr outcomes" in waiting.reason
    assert waiting.metric is not None and waiting.metric.candidate_count == 0
    for value in clicks(6, 200):
        await controller.record_outcome("fraud", 1, "", "ctr", value)
    for value in clicks(1, 199):
        await controller.record_outcome("fraud", 2, "", "ctr", value)
    assert await controller.record_outcome("fraud", 2, "", "ctr", 0.0) == (2, 200)
    await controller.tick()
    status = await controller.status("fraud")
    assert status.state == "rolled_back" and split_of(store) == {1: 10_000}
    last = status.decisions[-1]
    assert last.action == "rollback" and "candidate loses on ctr" in last.reason
    assert last.metric is not None and last.metric.candidate_count == 200
    assert last.metric.p_value < 0.05 and last.metric.baseline_mean == pytest.approx(0.3)
    with pytest.raises(FailedPreconditionError, match="not running"):
        await controller.record_outcome("fraud", 2, "", "ctr", 1.0)


async def test_an_outcome_by_routing_key_goes_to_the_arm_the_split_in_force_sends_it(
    parts: Parts,
) -> None:
    controller, _, _ = parts
    s = spec(business_metric="ctr")
    await controller.start(s)  # 10% on the candidate
    shares = [routing.Share(1, "", 9000), routing.Share(2, "", 1000)]
    for key in (f"user-{i}" for i in range(40)):
        expected = routing.pick(shares, routing.bucket_of("fraud", key)).version
        assert arm_of_key(s, 0, key) == expected
        version, _ = await controller.record_outcome("fraud", 0, key, "ctr", 1.0)
        assert version == expected
    assert {arm_of_key(s, 2, f"user-{i}") for i in range(40)} == {2}  # 100%: all candidate


async def test_outcomes_need_a_canary_with_a_business_metric(parts: Parts) -> None:
    controller, _, _ = parts
    with pytest.raises(NotFoundError):
        await controller.record_outcome("fraud", 2, "", "ctr", 1.0)
    await controller.start(spec())
    with pytest.raises(FailedPreconditionError, match="names no business metric"):
        await controller.record_outcome("fraud", 2, "", "ctr", 1.0)
