"""The ``modelserve`` console script against the running suite: list, push, label, infer, and
the errors a person sees on stderr with a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from testsupport import eventually

from modelserve.cli.suite import Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc

CLI = Path(sys.executable).parent / "modelserve"
MODEL = "cli_pushed"  # only this file uses it, so other tests see the demo models unchanged
ROW = np.linspace(-2.0, 2.0, 32, dtype=np.float32).reshape(1, 32)


async def modelserve(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [str(CLI), *args], capture_output=True, text=True, timeout=60
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
async def pushed(suite: Suite, demo_dir: Path) -> str:
    """Push tabular.onnx as version 1 of a new model with the CLI; returns what it printed."""
    result = await modelserve(
        "models",
        "--registry",
        suite.address("registry"),
        "push",
        MODEL,
        str(demo_dir / "tabular.onnx"),
        "--label",
        "staging",
    )
    return succeeded(result)


async def wait_ready(suite: Suite, name: str) -> None:
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def ready() -> None:
            reply = await stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=5)
            assert reply.ready

        await eventually(ready, timeout=60)


async def infer(suite: Suite, model: str, *extra: str) -> subprocess.CompletedProcess[str]:
    tensor = json.dumps(ROW.tolist())
    return await modelserve(
        "infer", model, "--gateway", suite.address("gateway"), "--input", f"INPUT0={tensor}", *extra
    )


def expected_output(demo_dir: Path) -> np.ndarray:
    session = ort.InferenceSession(
        str(demo_dir / "tabular.onnx"), providers=["CPUExecutionProvider"]
    )
    result: np.ndarray = session.run(["OUTPUT0"], {"INPUT0": ROW})[0]
    return result


async def test_models_list_shows_fraud_with_its_labels(suite: Suite) -> None:
    out = succeeded(await modelserve("models", "--registry", suite.address("registry"), "list"))
    lines = out.splitlines()
    fraud = next(i for i, line in enumerate(lines) if line.startswith("fraud "))
    assert "production->1" in lines[fraud] and "staging->2" in lines[fraud]
    versions = [line.split()[0] for line in lines[fraud + 1 : fraud + 3]]
    assert versions == ["v1", "v2"]
    assert "transaction:FP32[-1, 8]" in lines[fraud + 1]


async def test_push_reports_the_new_version(pushed: str) -> None:
    assert pushed.startswith(f"pushed {MODEL} version 1 sha256=")
    assert "labels=['staging']" in pushed


async def test_a_pushed_model_is_served_through_the_gateway(
    suite: Suite, pushed: str, demo_dir: Path
) -> None:
    await wait_ready(suite, MODEL)
    answer = json.loads(succeeded(await infer(suite, MODEL)))
    assert answer["model"] == MODEL and answer["version"] == "1"
    got = np.asarray(answer["outputs"]["OUTPUT0"], dtype=np.float32)
    assert got.shape == (1, 1)
    np.testing.assert_allclose(got, expected_output(demo_dir), rtol=1e-5, atol=1e-6)

    listed = succeeded(await modelserve("models", "--registry", suite.address("registry"), "list"))
    assert f"{MODEL}  labels: staging->1" in listed.splitlines()


async def test_label_points_a_new_label_at_a_version(suite: Suite, pushed: str) -> None:
    registry = suite.address("registry")
    out = succeeded(
        await modelserve("models", "--registry", registry, "label", MODEL, "1", "canary")
    )
    assert out.strip() == f"{MODEL}: canary -> version 1"
    listed = succeeded(await modelserve("models", "--registry", registry, "list"))
    assert f"{MODEL}  labels: canary->1, staging->1" in listed.splitlines()

    await wait_ready(suite, MODEL)

    async def answers_by_label() -> None:
        answer = json.loads(succeeded(await infer(suite, MODEL, "--version", "canary")))
        assert answer["version"] == "1"

    await eventually(answers_by_label, timeout=30)


async def test_label_of_an_unknown_version_fails(suite: Suite, pushed: str) -> None:
    registry = suite.address("registry")
    result = await modelserve("models", "--registry", registry, "label", MODEL, "99", "canary")
    assert result.returncode != 0
    assert result.stderr.startswith("error: NOT_FOUND:"), result.stderr
    assert "Traceback" not in result.stderr


async def test_infer_of_an_unknown_model_fails_with_not_found(suite: Suite) -> None:
    result = await infer(suite, "no_such_model")
    assert result.returncode != 0
    assert "NOT_FOUND" in result.stderr and "no_such_model" in result.stderr, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


async def test_push_of_a_non_onnx_file_fails_and_registers_nothing(
    suite: Suite, tmp_path: Path
) -> None:
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"this is not an ONNX protobuf\n" * 100)
    registry = suite.address("registry")
    result = await modelserve("models", "--registry", registry, "push", "cli_junk", str(junk))
    assert result.returncode != 0
    assert "FAILED_PRECONDITION" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    listed = succeeded(await modelserve("models", "--registry", registry, "list"))
    assert not any(line.startswith("cli_junk") for line in listed.splitlines())
