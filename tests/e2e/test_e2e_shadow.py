"""Shadow traffic through the running suite: with a shadow set by the CLI, callers of the
gateway get exactly the primary version's answers and statuses, while the router records the
pairs: no agreement when the shadow is another model (fraud v2 behind v1), full agreement when
it is the same model, and counted errors, never the caller's, when the shadow version fails on
every call. The disagreeing pairs come back, with the caller's x-request-id, through
RouterControl.ShadowDisagreements and ``modelserve shadow disagreements``. (A hanging shadow
is in tests/router/test_router_shadow.py, against a fake worker: this suite has one worker,
and stopping it would stop the primary too.)"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
from testsupport import eventually

from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2_grpc, router_pb2, router_pb2_grpc
from modelserve.tensors import decode_outputs, encode_inputs

CLI = Path(sys.executable).parent / "modelserve"
ROWS = [np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8) * k for k in (1.0, 0.5, -2.0)]


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


def request(model: str, rows: np.ndarray, version: str = "") -> pb.ModelInferRequest:
    out = pb.ModelInferRequest(model_name=model, model_version=version)
    encode_inputs(out, {"transaction": rows})
    return out


async def primary_answers(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> list[np.ndarray]:
    """v1's answers, asked by version number before any shadow is set (retried while v1
    warms up on the worker)."""

    async def ask() -> list[np.ndarray]:
        replies = [await stub.ModelInfer(request(model, r, "1"), timeout=5) for r in ROWS]
        return [decode_outputs(reply)["fraud_probability"] for reply in replies]

    return await eventually(ask, timeout=60)


async def report(suite: Suite, model: str) -> router_pb2.ShadowPair:
    async with grpc.aio.insecure_channel(suite.address("router")) as channel:
        stub = router_pb2_grpc.RouterControlStub(channel)
        answer = await stub.ShadowReport(router_pb2.ShadowReportRequest(model=model), timeout=5)
    (pair,) = answer.pairs
    return pair


async def shadowed_calls(
    suite: Suite, model: str, expected: list[np.ndarray], done: str
) -> router_pb2.ShadowPair:
    """Callers' answers equal v1's, call after call, until the report shows ``done``
    ("pairs" or "errors") for at least 6 mirrored calls."""
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def mirrored() -> router_pb2.ShadowPair:
            for rows, want in zip(ROWS, expected, strict=True):
                reply = await stub.ModelInfer(request(model, rows), timeout=5)  # OK, or raises
                assert reply.model_version == "1"
                np.testing.assert_array_equal(decode_outputs(reply)["fraud_probability"], want)
            pair = await report(suite, model)
            assert (pair.pairs if done == "pairs" else pair.shadow_errors) >= 6
            return pair

        return await eventually(mirrored, timeout=60)


async def test_a_shadow_of_another_model_never_agrees_and_the_caller_gets_v1(
    suite: Suite, demo_dir: Path
) -> None:
    model = "shadow_differs"
    await push(suite, model, demo_dir / "fraud_v1.onnx", demo_dir / "fraud_v2.onnx")
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        expected = await primary_answers(pb_grpc.GRPCInferenceServiceStub(channel), model)
    registry = ("policy", "--registry", suite.address("registry"))
    out = await modelserve(
        *registry, "shadow", model, "2", "--fraction", "1", "--tolerance", "1e-9"
    )
    assert "policy revision 1" in out
    assert "shadow 2 x1" in await modelserve(*registry, "show", model)
    pair = await shadowed_calls(suite, model, expected, "pairs")
    assert (pair.primary_version, pair.shadow_version) == (1, 2)
    assert pair.agreements == 0 and pair.max_abs_diff > 1e-9
    assert pair.shadow_errors == 0
    printed = await modelserve(
        *registry, "shadow-report", model, "--router", suite.address("router")
    )
    assert re.search(r"v1 -> shadow v2: \d+ pairs, agreement 0\.00%", printed), printed
    assert "latency p50" in printed and "latency p99" in printed and "delta" in printed

    await modelserve(*registry, "shadow-off", model)
    shown = await modelserve(*registry, "show", model)
    assert "revision 2: none" in shown and "; shadow" not in shown


async def test_a_shadow_of_the_same_model_always_agrees(suite: Suite, demo_dir: Path) -> None:
    model = "shadow_same"
    await push(suite, model, demo_dir / "fraud_v1.onnx", demo_dir / "fraud_v1.onnx")
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        expected = await primary_answers(pb_grpc.GRPCInferenceServiceStub(channel), model)
    await modelserve(
        "policy", "--registry", suite.address("registry"), "shadow", model, "2", "--fraction", "1"
    )
    pair = await shadowed_calls(suite, model, expected, "pairs")
    assert pair.agreements == pair.pairs and pair.max_abs_diff == 0.0
    printed = await modelserve(
        "policy", "shadow-report", model, "--router", f"{suite.address('router')}"
    )
    assert re.search(r"agreement 100\.00%", printed), printed


async def test_a_failing_shadow_never_changes_the_callers_answer_or_status(
    suite: Suite, demo_dir: Path
) -> None:
    # v2 takes INPUT0 [-1, 32]: every mirrored call fails on the worker (INVALID_ARGUMENT).
    model = "shadow_fails"
    await push(suite, model, demo_dir / "fraud_v1.onnx", demo_dir / "tabular.onnx")
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        expected = await primary_answers(pb_grpc.GRPCInferenceServiceStub(channel), model)
    await modelserve(
        "policy", "--registry", suite.address("registry"), "shadow", model, "2", "--fraction", "1"
    )
    pair = await shadowed_calls(suite, model, expected, "errors")
    assert pair.pairs == 0 and pair.shadow_timeouts == 0


async def test_disagreements_come_back_with_the_callers_request_id_and_versions(
    suite: Suite, demo_dir: Path
) -> None:
    model = "shadow_kept"
    await push(suite, model, demo_dir / "fraud_v1.onnx", demo_dir / "fraud_v2.onnx")
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        expected = await primary_answers(pb_grpc.GRPCInferenceServiceStub(channel), model)
    await modelserve(
        "policy", "--registry", suite.address("registry"), "shadow", model, "2", "--fraction", "1"
    )
    ids = {f"kept-{k}": k for k in range(len(ROWS))}
    router = suite.address("router")
    async with (
        grpc.aio.insecure_channel(suite.address("gateway")) as channel,
        grpc.aio.insecure_channel(router) as control,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        routers = router_pb2_grpc.RouterControlStub(control)

        async def kept() -> dict[str, router_pb2.ShadowDisagreement]:
            # Until the shadow is in force on the router, calls are not mirrored: ask again.
            for request_id, k in ids.items():
                metadata = (("x-request-id", request_id),)
                reply = await stub.ModelInfer(request(model, ROWS[k]), timeout=5, metadata=metadata)
                assert reply.model_version == "1"
            answer = await routers.ShadowDisagreements(
                router_pb2.ShadowDisagreementsRequest(model=model), timeout=5
            )
            found = {e.request_ids[0]: e for e in answer.entries if e.request_ids[0] in ids}
            assert set(found) == set(ids), answer
            return found

        found = await eventually(kept, timeout=60)
    for request_id, k in ids.items():
        entry = found[request_id]
        assert list(entry.request_ids) == [request_id] and not entry.request_id_generated
        assert (entry.primary_version, entry.shadow_version) == (1, 2)
        assert entry.input_sha256 == hashlib.sha256(ROWS[k].tobytes()).hexdigest()[:16]
        (primary,) = entry.primary_outputs
        assert primary.name == "fraud_probability" and list(primary.shape) == [1, 1]
        np.testing.assert_allclose(primary.values, expected[k].reshape(-1), rtol=1e-6)
        (shadow,) = entry.shadow_outputs
        assert entry.max_diff_output == "fraud_probability"
        assert entry.max_abs_diff == abs(shadow.values[0] - primary.values[0]) > 0
        assert entry.primary_latency_s > 0 and entry.shadow_latency_s > 0 and not entry.error

    printed = await modelserve("shadow", "disagreements", model, "--router", router, "--json")
    parsed = json.loads(printed)
    assert parsed["routers"][0]["router"] == router
    assert parsed["routers"][0]["disagreements_seen"] >= len(ids)
    by_id = {e["request_ids"][0]: e for e in parsed["entries"]}
    for request_id in ids:
        assert by_id[request_id]["primary_version"] == "1"  # int64 is a string in proto JSON
        assert by_id[request_id]["shadow_version"] == "2"
    table = await modelserve("shadow", "disagreements", model, "--router", router, "--limit", "0")
    for request_id in ids:
        # kept() sends every id again each round until all are mirrored, so an id can have
        # several entries; each must read the same.
        rows = [line for line in table.splitlines() if f" {request_id} " in line]
        assert rows, table
        row = rows[0]
        assert "v1 -> v2" in row and "in fraud_probability" in row, table
    assert "primary fraud_probability FP32[1, 1]" in table
    summary = await modelserve("shadow", "report", model, "--router", router)
    assert re.search(r"v1 -> shadow v2: \d+ pairs, agreement 0\.00%", summary), summary
    await modelserve("policy", "--registry", suite.address("registry"), "shadow-off", model)
