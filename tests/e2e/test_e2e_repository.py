"""The model_repository extension through the real suite with tritonclient: unload_model
takes a model out of service (ModelReady false, inference UNAVAILABLE saying how to load it,
RepositoryIndex "unloaded"), load_model returns once it serves again."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import onnxruntime as ort
import pytest
from test_e2e_clients import CLIENTS

from modelserve.cli.suite import Suite
from modelserve.cli.up import wait_models_ready
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc

CLI = Path(sys.executable).parent / "modelserve"


async def run(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, list(args), capture_output=True, text=True, timeout=180
    )


async def test_tritonclient_unload_and_load(suite: Suite, demo_dir: Path) -> None:
    pushed = await run(
        str(CLI), "models", "--registry", suite.address("registry"),
        "push", "repo_tabular", str(demo_dir / "tabular.onnx"),
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    await wait_models_ready(suite.address("gateway"), ["repo_tabular"], timeout=120)
    proc = await run(
        sys.executable,
        str(CLIENTS / "triton_repository.py"),
        suite.address("gateway"),
        "repo_tabular",
        "INPUT0",
        "32",
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert "model_repository" in seen["extensions"] and "classification" in seen["extensions"]
    assert seen["ready_before"]
    assert not seen["ready_after_unload"] and seen["unready_after_s"] < 5
    infer = seen["infer_unloaded"]
    assert infer["status"] == "StatusCode.UNAVAILABLE", infer
    assert "'repo_tabular' is unloaded" in infer["message"] and "load_model" in infer["message"]
    assert seen["index_unloaded"] == [
        {"name": "repo_tabular", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}
    ]
    assert seen["ready_after_load"]
    assert seen["infer_loaded"]["status"] == "OK", seen["infer_loaded"]
    assert seen["load_unknown"]["status"] == "StatusCode.NOT_FOUND"
    assert seen["unload_unknown"]["status"] == "StatusCode.NOT_FOUND"
    assert seen["load_config"]["status"] == "StatusCode.UNIMPLEMENTED"
    assert "'config'" in seen["load_config"]["message"]
    # The registry kept the state it was left in: loaded.
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        model = await registry_pb2_grpc.RegistryStub(channel).GetModel(
            registry_pb2.GetModelRequest(name="repo_tabular"), timeout=10
        )
    assert not model.unloaded


async def test_cli_unload_and_load(suite: Suite, demo_dir: Path) -> None:
    registry = suite.address("registry")
    pushed = await run(
        str(CLI), "models", "--registry", registry,
        "push", "repo_cli", str(demo_dir / "tabular.onnx"),
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    unloaded = await run(str(CLI), "models", "--registry", registry, "unload", "repo_cli")
    assert unloaded.returncode == 0 and "repo_cli: unloaded" in unloaded.stdout, unloaded.stderr
    listed = await run(str(CLI), "models", "--registry", registry, "list")
    assert "repo_cli  labels: -  (unloaded)" in listed.stdout
    loaded = await run(str(CLI), "models", "--registry", registry, "load", "repo_cli")
    assert loaded.returncode == 0 and "repo_cli: loaded" in loaded.stdout, loaded.stderr
    await wait_models_ready(suite.address("gateway"), ["repo_cli"], timeout=120)


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="needs a machine where execution_provider cuda cannot load",
)
async def test_load_reports_the_workers_load_error(
    suite: Suite, demo_dir: Path, gateway: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """T21: a version no worker can load (cuda required, none here): load answers
    FAILED_PRECONDITION (RELIABILITY.md's code for a failed load) with the worker's reason,
    well before its deadline."""
    pushed = await run(
        str(CLI), "models", "--registry", suite.address("registry"),
        "push", "repo_cuda", str(demo_dir / "tabular.onnx"), "--execution-provider", "cuda",
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    await gateway.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="repo_cuda"))
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await gateway.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name="repo_cuda"), timeout=30
        )
    assert time.monotonic() - started < 20
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
    details = info.value.details() or ""
    assert "'repo_cuda' version 1 did not load (load failed:" in details
    assert "cuda" in details
