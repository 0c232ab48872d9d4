"""Canaries through the running suite, driven by the CLI: a candidate that behaves like its
baseline steps up to 100% of the traffic by itself; one that fails on the callers' inputs is
rolled back to the baseline automatically, and `canary status` shows the numbers that led to
each decision. A candidate whose signature the callers' requests do not fit fails them at the
gateway, before any router: the gateway's count of those rejections rolls it back too. One
that answers well but loses on a business metric (posted outcomes) is rolled back, and so is
a step that never gets enough traffic, once its maximum duration has passed."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from testsupport import eventually

from modelserve.cli.demo_models import IR_VERSION, OPSET
from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import (
    canary_pb2,
    canary_pb2_grpc,
    gateway_pb2_grpc,
    registry_pb2_grpc,
    router_pb2,
)
from modelserve.tensors import encode_inputs

CLI = Path(sys.executable).parent / "modelserve"
ROW = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)


def fails_on_real_inputs() -> onnx.ModelProto:
    """fraud's signature; answers the worker's all-zero warmup, but any input with a nonzero
    value asks Reshape for width 9, which ONNX Runtime refuses at run time (INTERNAL)."""
    nodes = [
        helper.make_node("Abs", ["transaction"], ["a"]),
        helper.make_node("ReduceMax", ["a"], ["m"], keepdims=0),
        helper.make_node("Greater", ["m", "zero"], ["g"]),
        helper.make_node("Cast", ["g"], ["gi"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["gi", "one"], ["g1"]),
        helper.make_node("Add", ["eight", "g1"], ["w"]),
        helper.make_node("Concat", ["minus1", "w"], ["shape"], axis=0),
        helper.make_node("Reshape", ["transaction", "shape"], ["r"]),
        helper.make_node("ReduceSum", ["r", "one"], ["s"], keepdims=1),
        helper.make_node("Sigmoid", ["s"], ["fraud_probability"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([8], np.int64), "eight"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ]
    graph = helper.make_graph(
        nodes,
        "fails_on_real_inputs",
        [helper.make_tensor_value_info("transaction", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("fraud_probability", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


async def modelserve(*args: str) -> str:
    result = await asyncio.to_thread(
        subprocess.run, [str(CLI), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


async def push(suite: Suite, model: str, first: Path, second: Path) -> None:
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        await push_version(stub, model, first, labels=["production"])
        await push_version(stub, model, second)


@contextlib.asynccontextmanager
async def traffic(suite: Suite, model: str) -> AsyncIterator[None]:
    """Four callers sending the model's calls (no routing key: split at random) until the
    block ends; failures are the candidate's and are what the canary must see."""
    request = pb.ModelInferRequest(model_name=model)
    encode_inputs(request, {"transaction": ROW})

    async def caller(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.ModelInfer(request, timeout=5)
            await asyncio.sleep(0.002)

    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        tasks = [asyncio.create_task(caller(stub)) for _ in range(4)]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def final_state(suite: Suite, model: str) -> canary_pb2.CanaryStatus:
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        stub = canary_pb2_grpc.CanaryStub(channel)

        async def finished() -> canary_pb2.CanaryStatus:
            status = await stub.GetCanary(canary_pb2.GetCanaryRequest(model=model), timeout=5)
            assert status.state != "running", status.decisions[-1:]
            return status

        return await eventually(finished, timeout=90)


def start_args(suite: Suite, model: str, *gates: str) -> list[str]:
    return [
        "canary", "--registry", suite.address("registry"), "start", model,
        "--baseline", "1", "--candidate", "2", "--steps", "20,50,100",
        "--min-requests", "15", "--min-seconds", "1", "--router", suite.address("router"),
        *gates,
    ]  # fmt: skip


async def test_a_good_candidate_reaches_100_percent(suite: Suite, demo_dir: Path) -> None:
    model = "canary_good"  # v2 is a copy of v1: the same answers, the same speed
    await push(suite, model, demo_dir / "fraud_v1.onnx", demo_dir / "fraud_v1.onnx")
    async with traffic(suite, model):
        # p99 from a few dozen calls on a busy test box is noisy: only errors decide here.
        printed = await modelserve(*start_args(suite, model, "--max-p99-ratio", "20"))
        assert "v1 -> v2 running, step 1/3 (20%" in printed
        status = await final_state(suite, model)
    assert status.state == "promoted", status
    actions = [d.action for d in status.decisions if d.action != "wait"]
    assert actions == ["start", "advance", "promote"]
    judged = [d for d in status.decisions if d.action in ("advance", "promote")]
    assert all(d.candidate.requests >= 15 and d.candidate.errors == 0 for d in judged)
    shown = await modelserve("policy", "--registry", suite.address("registry"), "show", model)
    assert "split 2=100%" in shown, shown


async def test_a_failing_candidate_is_rolled_back(
    suite: Suite, demo_dir: Path, tmp_path: Path
) -> None:
    model = "canary_bad"
    bad = tmp_path / "fails.onnx"
    onnx.save(fails_on_real_inputs(), bad)
    await push(suite, model, demo_dir / "fraud_v1.onnx", bad)
    async with traffic(suite, model):
        await modelserve(*start_args(suite, model))
        status = await final_state(suite, model)
    assert status.state == "rolled_back", status
    last = status.decisions[-1]
    assert last.action == "rollback" and last.percent == 20
    assert last.candidate.errors == last.candidate.requests >= 15
    assert last.baseline.errors == 0 and last.baseline.requests >= 15
    printed = await modelserve("canary", "--registry", suite.address("registry"), "status", model)
    assert "rolled_back" in printed and "rollback" in printed and "error rate 1.0000" in printed
    shown = await modelserve("policy", "--registry", suite.address("registry"), "show", model)
    assert "split 1=100%" in shown, shown


def never_loads() -> onnx.ModelProto:
    """fraud's signature, but every run asks Reshape for width 9 of 8-wide rows: the worker's
    warmup fails, so no worker ever holds it."""
    nodes = [helper.make_node("Reshape", ["transaction", "shape"], ["fraud_probability"])]
    inits = [numpy_helper.from_array(np.array([-1, 9], np.int64), "shape")]
    graph = helper.make_graph(
        nodes,
        "never_loads",
        [helper.make_tensor_value_info("transaction", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("fraud_probability", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


async def test_a_candidate_no_worker_can_load_is_rolled_back(
    suite: Suite, demo_dir: Path, tmp_path: Path
) -> None:
    model = "canary_never_loads"
    bad = tmp_path / "never_loads.onnx"
    onnx.save(never_loads(), bad)
    await push(suite, model, demo_dir / "fraud_v1.onnx", bad)
    await modelserve(*start_args(suite, model, "--ready-timeout", "4"))
    status = await final_state(suite, model)
    assert status.state == "rolled_back", status
    # The first split never applied: the candidate failed to load (its pending policy says
    # why), so no caller was ever sent to it.
    assert "failed to load" in status.decisions[-1].reason, status.decisions[-1].reason
    shown = await modelserve("policy", "--registry", suite.address("registry"), "show", model)
    assert "split 1=100%" in shown, shown


async def test_invalid_steps_are_refused(suite: Suite, demo_dir: Path) -> None:
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        stub = canary_pb2_grpc.CanaryStub(channel)
        spec = canary_pb2.CanarySpec(model="fraud", baseline=1, candidate=2, steps=[50, 20, 100])
        try:
            await stub.StartCanary(canary_pb2.StartCanaryRequest(spec=spec), timeout=5)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "rise strictly" in (exc.details() or "")
        else:
            raise AssertionError("steps 50,20,100 were accepted")


def nine_wide() -> onnx.ModelProto:
    """fraud retrained on 9 features: "transaction" is [batch, 9], so the callers' 8-wide
    rows fail its signature at the gateway (INVALID_ARGUMENT) and never reach a router."""
    weights = np.full((9, 1), 0.1, np.float32)
    nodes = [
        helper.make_node("MatMul", ["transaction", "W"], ["s"]),
        helper.make_node("Sigmoid", ["s"], ["fraud_probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "nine_wide",
        [helper.make_tensor_value_info("transaction", TensorProto.FLOAT, ["batch", 9])],
        [helper.make_tensor_value_info("fraud_probability", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def start_request(spec: canary_pb2.CanarySpec) -> canary_pb2.StartCanaryRequest:
    """A start that asks for a signature change to be let through where the registry knows
    the flag (a check at start may refuse such a candidate; this test is about the gates)."""
    request = canary_pb2.StartCanaryRequest(spec=spec)
    if "allow_signature_change" in request.DESCRIPTOR.fields_by_name:
        setattr(request, "allow_signature_change", True)  # noqa: B010 (not in every build)
    return request


async def test_a_candidate_whose_signature_the_callers_miss_is_rolled_back(
    suite: Suite, demo_dir: Path, tmp_path: Path
) -> None:
    model = "canary_signature"
    nine = tmp_path / "nine_wide.onnx"
    onnx.save(nine_wide(), nine)
    await push(suite, model, demo_dir / "fraud_v1.onnx", nine)
    spec = canary_pb2.CanarySpec(
        model=model,
        baseline=1,
        candidate=2,
        steps=[20, 50, 100],
        min_requests=15,
        min_seconds=1,
        max_step_seconds=30,
        routers=[suite.address("router")],
        gateways=[suite.address("gateway")],
    )
    async with (
        traffic(suite, model),
        grpc.aio.insecure_channel(suite.address("registry")) as channel,
    ):
        await canary_pb2_grpc.CanaryStub(channel).StartCanary(start_request(spec), timeout=10)
        status = await final_state(suite, model)
    assert status.state == "rolled_back", status
    last = status.decisions[-1]
    assert last.action == "rollback" and last.percent == 20, last
    # Every candidate call was a gateway rejection: no router saw one, yet they all count.
    assert last.candidate.errors == last.candidate.requests >= 15, last
    assert last.baseline.errors == 0 and last.baseline.requests >= 15, last
    assert "candidate error rate 1.0000" in last.reason and "calls)" in last.reason, last
    assert last.step_seconds < 30, last  # by the error gate, within the step limit
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        rejected = await gateway_pb2_grpc.GatewayControlStub(channel).VersionStats(
            router_pb2.VersionStatsRequest(model=model), timeout=5
        )
    counts = {v.version: (v.requests, v.errors) for v in rejected.versions}
    # The gateway counted every candidate call as a rejection; the baseline's calls it served
    # itself (the direct lane, gateway/direct.py) count there too, all OK.
    assert counts[2][0] == counts[2][1] >= last.candidate.requests, counts
    assert 1 not in counts or counts[1][1] == 0, counts
    shown = await modelserve("policy", "--registry", suite.address("registry"), "show", model)
    assert "split 1=100%" in shown, shown


async def test_a_step_without_enough_traffic_is_rolled_back_after_max_step_seconds(
    suite: Suite, demo_dir: Path
) -> None:
    model = "canary_quiet"  # a good candidate, but nobody calls: the evidence never comes
    await push(suite, model, demo_dir / "fraud_v1.onnx", demo_dir / "fraud_v1.onnx")
    printed = await modelserve(
        *start_args(suite, model, "--max-step-seconds", "3", "--gateway", suite.address("gateway"))
    )
    assert "1-3 s" in printed, printed
    status = await final_state(suite, model)
    assert status.state == "rolled_back", status
    last = status.decisions[-1]
    assert last.action == "rollback" and last.percent == 20, last
    assert last.step_seconds >= 3, last
    assert "with baseline 0, candidate 0 calls; needs 15 each within 3 s" in last.reason, last
    shown = await modelserve("policy", "--registry", suite.address("registry"), "show", model)
    assert "split 1=100%" in shown, shown


async def test_a_candidate_that_loses_on_the_business_metric_is_rolled_back(
    suite: Suite, demo_dir: Path
) -> None:
    """v2 answers like v1, without errors, but its users click less (ctr ~0.05 against the
    baseline's ~0.3): callers post each answer's outcome with the version it carried, and
    the sequential test rolls the candidate back, the metric named in the reason."""
    model = "canary_business"
    await push(suite, model, demo_dir / "fraud_v1.onnx", demo_dir / "fraud_v1.onnx")
    ctr = {1: 0.3, 2: 0.05}
    rng = np.random.default_rng(7)
    posted: dict[int, int] = {1: 0, 2: 0}

    async def shopper(
        number: int, infer: pb_grpc.GRPCInferenceServiceStub, canary: canary_pb2_grpc.CanaryStub
    ) -> None:
        for i in itertools.count():
            request = pb.ModelInferRequest(model_name=model)
            encode_inputs(request, {"transaction": ROW})
            request.parameters["routing_key"].string_param = f"user-{number}-{i}"
            with contextlib.suppress(grpc.aio.AioRpcError):
                answer = await infer.ModelInfer(request, timeout=5)
                version = int(answer.model_version)
                outcome = canary_pb2.RecordCanaryOutcomeRequest(
                    model=model,
                    version=version,
                    metric="ctr",
                    value=float(rng.random() < ctr[version]),
                )
                await canary.RecordCanaryOutcome(outcome, timeout=5)
                posted[version] += 1

    printed = await modelserve(
        *start_args(suite, model, "--max-p99-ratio", "20", "--business-metric", "ctr"),
        "--min-seconds", "20", "--max-step-seconds", "60",
    )  # fmt: skip
    assert "ctr (higher is better, alpha 0.05)" in printed, printed
    by_key = await modelserve(
        "canary", "--registry", suite.address("registry"), "outcome", model,
        "--routing-key", "someone", "--metric", "ctr", "--value", "0",
    )  # fmt: skip
    assert f"{model} v" in by_key and "ctr outcomes" in by_key, by_key
    async with (
        grpc.aio.insecure_channel(suite.address("gateway")) as gateway,
        grpc.aio.insecure_channel(suite.address("registry")) as registry,
    ):
        infer = pb_grpc.GRPCInferenceServiceStub(gateway)
        canary = canary_pb2_grpc.CanaryStub(registry)
        tasks = [asyncio.create_task(shopper(n, infer, canary)) for n in range(6)]
        try:
            status = await final_state(suite, model)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert status.state == "rolled_back", status
    last = status.decisions[-1]
    assert last.action == "rollback" and "candidate loses on ctr" in last.reason, last
    assert last.candidate.errors == 0 and last.baseline.errors == 0, last
    assert last.HasField("metric") and last.metric.name == "ctr", last
    assert last.metric.candidate_mean < last.metric.baseline_mean, last.metric
    assert last.metric.p_value < 0.05 and last.metric.candidate_count >= 30, last.metric
    assert posted[2] >= 30, posted
    shown = await modelserve("canary", "--registry", suite.address("registry"), "status", model)
    assert "ctr: base 0." in shown and "candidate loses on ctr" in shown, shown
    policy = await modelserve("policy", "--registry", suite.address("registry"), "show", model)
    assert "split 1=100%" in policy, policy
