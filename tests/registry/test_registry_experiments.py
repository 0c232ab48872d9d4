"""The Experiments RPCs over a real grpc.aio server beside a real registry: starting sets the
model's split, outcomes land on the arm their routing key is bucketed to, the report tells a
real effect from none, and a guard rail stops a harmful arm and sends traffic to the control."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from grpc import aio
from registry_testkit import FRAUD_V1, FRAUD_V2, Registry, expect_status

from modelserve.catalog import routing
from modelserve.interceptors import ErrorInterceptor
from modelserve.proto.modelserve.v1 import experiments_pb2 as xpb
from modelserve.proto.modelserve.v1 import experiments_pb2_grpc, registry_pb2
from registry.experiments.servicer import ExperimentServicer
from registry.experiments.store import ExperimentStore

pytestmark = pytest.mark.usefixtures("database_url")

MODEL = "exp_model"
Stub = experiments_pb2_grpc.ExperimentsStub


@pytest.fixture
async def stub(registry: Registry) -> AsyncIterator[Stub]:
    await registry.push(MODEL, FRAUD_V1, labels=["production"])
    await registry.push(MODEL, FRAUD_V2, labels=["candidate"])
    store = ExperimentStore(
        registry.data_dir / "experiments.sqlite3",
        registry.store,
        database_url=registry.store.database_url,
    )
    server = aio.server(interceptors=[ErrorInterceptor()])
    experiments_pb2_grpc.add_ExperimentsServicer_to_server(ExperimentServicer(store=store), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield experiments_pb2_grpc.ExperimentsStub(channel)
    await server.stop(None)
    store.close()


def experiment(name: str, *guards: xpb.GuardRail) -> xpb.StartExperimentRequest:
    arms = [
        xpb.ExperimentArm(name="control", version=1, percent=50),
        xpb.ExperimentArm(name="treatment", label="candidate", percent=50),
    ]
    return xpb.StartExperimentRequest(
        experiment=xpb.Experiment(name=name, model=MODEL, arms=arms, guard_rails=guards)
    )


async def policy_of(registry: Registry) -> registry_pb2.RoutingPolicy:
    model = await registry.stub.GetModel(registry_pb2.GetModelRequest(name=MODEL))
    return model.policy.policy


async def simulate(
    stub: Stub, name: str, rates: dict[str, float], n_keys: int, seed: int
) -> dict[str, int]:
    """Record a click (rate by arm) for ``n_keys`` users; the arm comes from each key."""
    rng = np.random.default_rng(seed)
    shares = [routing.Share(1, "", 5000), routing.Share(0, "candidate", 5000)]
    counts = {"control": 0, "treatment": 0}
    for i in range(n_keys):
        key = f"user-{seed}-{i}"
        expected = (
            "control"
            if routing.pick(shares, routing.bucket_of(MODEL, key)).version
            else ("treatment")
        )
        value = float(rng.random() < rates[expected])
        reply = await stub.RecordOutcome(
            xpb.RecordOutcomeRequest(experiment=name, routing_key=key, metric="click", value=value)
        )
        assert reply.arm == expected
        counts[expected] += 1
    return counts


def row(report: xpb.ExperimentReport, arm: str, metric: str = "click") -> xpb.ArmMetric:
    return next(m for m in report.metrics if (m.arm, m.metric) == (arm, metric))


async def test_start_sets_split_and_stop_returns_to_control(stub: Stub, registry: Registry) -> None:
    started = await stub.StartExperiment(experiment("ab-start"))
    assert started.state == xpb.Experiment.RUNNING and started.alpha == 0.05
    policy = await policy_of(registry)
    assert [(t.version, t.label, t.percent) for t in policy.split] == [
        (1, "", 50.0),
        (0, "candidate", 50.0),
    ]
    await expect_status(
        stub.StartExperiment(experiment("ab-other")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ab-start",
    )
    stopped = await stub.StopExperiment(xpb.StopExperimentRequest(name="ab-start"))
    assert (stopped.state, stopped.stop_reason) == (xpb.Experiment.STOPPED, "stopped by hand")
    policy = await policy_of(registry)
    assert [(t.version, t.percent) for t in policy.split] == [(1, 100.0)]
    await expect_status(
        stub.RecordOutcome(
            xpb.RecordOutcomeRequest(experiment="ab-start", arm="control", metric="x", value=1)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "stopped",
    )


async def test_refusals_name_what_was_wrong(stub: Stub) -> None:
    bad = experiment("ab-bad")
    bad.experiment.arms[1].percent = 40
    await expect_status(stub.StartExperiment(bad), grpc.StatusCode.INVALID_ARGUMENT, "sum to 100")
    unknown = experiment("ab-unknown")
    unknown.experiment.arms[1].label = "nope"
    await expect_status(stub.StartExperiment(unknown), grpc.StatusCode.FAILED_PRECONDITION)
    await expect_status(
        stub.GetReport(xpb.GetReportRequest(name="ab-missing")), grpc.StatusCode.NOT_FOUND
    )
    await stub.StartExperiment(experiment("ab-ok"))
    await expect_status(
        stub.RecordOutcome(
            xpb.RecordOutcomeRequest(experiment="ab-ok", arm="nope", metric="click", value=1)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "control",
    )


async def test_real_effect_is_significant_and_none_is_not(stub: Stub) -> None:
    await stub.StartExperiment(experiment("ab-effect"))
    counts = await simulate(stub, "ab-effect", {"control": 0.10, "treatment": 0.25}, 1000, 1)
    report = await stub.GetReport(xpb.GetReportRequest(name="ab-effect"))
    control, treatment = row(report, "control"), row(report, "treatment")
    assert (control.count, treatment.count) == (counts["control"], counts["treatment"])
    assert control.is_control and control.ci_low < control.mean < control.ci_high
    assert treatment.significant and treatment.p_value < 0.05
    assert treatment.difference_low > 0

    await stub.StopExperiment(xpb.StopExperimentRequest(name="ab-effect"))
    await stub.StartExperiment(experiment("ab-null"))
    await simulate(stub, "ab-null", {"control": 0.10, "treatment": 0.10}, 1000, 2)
    report = await stub.GetReport(xpb.GetReportRequest(name="ab-null"))
    treatment = row(report, "treatment")
    assert not treatment.significant and treatment.p_value >= 0.05
    assert treatment.difference_low < 0 < treatment.difference_high


async def test_guard_rail_stops_a_harmful_arm(stub: Stub, registry: Registry) -> None:
    guard = xpb.GuardRail(metric="error", max_mean=0.05)
    await stub.StartExperiment(experiment("ab-guard", guard))
    rng = np.random.default_rng(5)
    stopped = None
    for i in range(1000):  # errors: 2% on the control, 30% on the treatment
        arm = "treatment" if i % 2 else "control"
        value = float(rng.random() < (0.30 if arm == "treatment" else 0.02))
        reply = await stub.RecordOutcome(
            xpb.RecordOutcomeRequest(experiment="ab-guard", arm=arm, metric="error", value=value)
        )
        if reply.experiment.state == xpb.Experiment.STOPPED:
            stopped = reply.experiment
            break
    assert stopped is not None, "the guard rail never stopped the harmful arm"
    assert "error<=0.05" in stopped.stop_reason and "treatment" in stopped.stop_reason
    policy = await policy_of(registry)
    assert [(t.version, t.percent) for t in policy.split] == [(1, 100.0)]
    shown = await stub.GetExperiment(xpb.GetExperimentRequest(name="ab-guard"))
    assert shown.state == xpb.Experiment.STOPPED


async def test_outcomes_survive_a_restart_as_aggregates(stub: Stub, registry: Registry) -> None:
    await stub.StartExperiment(experiment("ab-restart"))
    for value in (1.0, 0.0, 1.0):
        await stub.RecordOutcome(
            xpb.RecordOutcomeRequest(
                experiment="ab-restart", arm="control", metric="click", value=value
            )
        )
    reopened = ExperimentStore(
        registry.data_dir / "experiments.sqlite3",
        registry.store,
        database_url=registry.store.database_url,
    )
    try:
        control = row(reopened.report("ab-restart"), "control")
        assert (control.count, control.mean) == (3, pytest.approx(2 / 3))
        assert reopened.get("ab-restart").state == xpb.Experiment.RUNNING
    finally:
        reopened.close()
