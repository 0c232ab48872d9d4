"""A/B experiments through the running suite: started with the CLI, the gateway answers each
routing key from the arm the registry computes for it, outcomes recorded by key land on that
arm, the report counts them per arm, and stopping sends every key to the control."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from testsupport import eventually

from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import experiments_pb2 as xpb
from modelserve.proto.modelserve.v1 import experiments_pb2_grpc, registry_pb2_grpc
from modelserve.tensors import encode_inputs

CLI = Path(sys.executable).parent / "modelserve"
MODEL = "ab_demo"  # only this file uses it
KEYS = [f"shopper-{i}" for i in range(60)]
ROWS = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)


async def experiment_cli(suite: Suite, *args: str) -> str:
    command = [str(CLI), "experiment", "--registry", suite.address("registry"), *args]
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
async def pushed(suite: Suite, demo_dir: Path) -> str:
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        await push_version(stub, MODEL, demo_dir / "fraud_v1.onnx")
        await push_version(stub, MODEL, demo_dir / "fraud_v2.onnx", labels=["challenger"])
    return MODEL


async def answers(gateway: str, keys: list[str]) -> list[str]:
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def one(key: str) -> str:
            request = pb.ModelInferRequest(model_name=MODEL)
            request.parameters["routing_key"].string_param = key
            encode_inputs(request, {"transaction": ROWS})
            return (await stub.ModelInfer(request, timeout=10)).model_version

        return list(await asyncio.gather(*(one(k) for k in keys)))


async def test_experiment_routes_records_and_reports_per_arm(suite: Suite, pushed: str) -> None:
    out = await experiment_cli(
        suite,
        "start",
        "ab-e2e",
        "--model",
        MODEL,
        "--arm",
        "control=1:50",
        "--arm",
        "treatment=challenger:50",
        "--guard",
        "error<=0.5",
    )
    assert "ab-e2e on ab_demo: running; arms control=1:50% treatment=challenger:50%" in out
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        stub = experiments_pb2_grpc.ExperimentsStub(channel)
        # The arm of each key, as the registry computes it (an outcome by key, metric "seen").
        arms = []
        for key in KEYS:
            reply = await stub.RecordOutcome(
                xpb.RecordOutcomeRequest(
                    experiment="ab-e2e", routing_key=key, metric="seen", value=1
                )
            )
            arms.append(reply.arm)
        assert set(arms) == {"control", "treatment"}
        version_of = {"control": "1", "treatment": "2"}
        want = [version_of[a] for a in arms]

        async def gateway_follows_the_experiment() -> None:
            assert await answers(suite.address("gateway"), KEYS) == want

        await eventually(gateway_follows_the_experiment, timeout=60)

        out = await experiment_cli(
            suite, "outcome", "ab-e2e", "--key", KEYS[0], "--metric", "click", "--value", "1"
        )
        assert f"recorded for arm {arms[0]}" in out
        report = await stub.GetReport(xpb.GetReportRequest(name="ab-e2e"))
        seen = {m.arm: m.count for m in report.metrics if m.metric == "seen"}
        assert seen == {"control": arms.count("control"), "treatment": arms.count("treatment")}

    out = await experiment_cli(suite, "report", "ab-e2e")
    assert "seen" in out and "click" in out and "(control)" in out
    assert "stopped by hand" in await experiment_cli(suite, "stop", "ab-e2e")

    async def all_on_control() -> None:
        assert set(await answers(suite.address("gateway"), KEYS)) == {"1"}

    await eventually(all_on_control, timeout=60)
