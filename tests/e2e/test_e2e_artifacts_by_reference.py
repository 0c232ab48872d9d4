"""Artifacts by reference through the whole suite: versions pushed with ``modelserve models
push --uri`` (HTTP) and by the registry client (S3, on a real S3 endpoint on loopback) are
verified by the registry, loaded by the worker and inferred through the gateway. The worker
reads the HTTP one straight from the server; its S3 endpoint is set to a dead port, so it
falls back to the registry, which relays that artifact from S3."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from artifactsupport import S3_ENV, HttpStore, S3Store, http_store, s3_store, sha256_of
from suitesupport import dump_logs

from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import SERVICES, Suite, start_suite, wait_serving
from modelserve.cli.up import wait_models_ready
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.proto.modelserve.v1 import registry_pb2_grpc
from modelserve.tensors import decode_outputs, encode_inputs


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HttpStore, S3Store]]:
    pytest.importorskip("boto3", reason="the s3 extra (boto3) is not installed")
    with http_store(tmp_path_factory.mktemp("www")) as www, s3_store() as s3:
        yield www, s3


@pytest.fixture(scope="module")
async def by_ref_suite(
    tmp_path_factory: pytest.TempPathFactory, stores: tuple[HttpStore, S3Store]
) -> AsyncIterator[Suite]:
    www, s3 = stores
    env = {
        **S3_ENV,
        "MODELSERVE_ARTIFACT_URI_PREFIXES": f"{www.url}/,s3://models/",
        "MODELSERVE_S3_ENDPOINT_URL": s3.endpoint_url,
        "MODELSERVE_ARTIFACT_FETCH_TIMEOUT_SECONDS": "5",
    }
    # The worker cannot reach the S3 store (a port nothing listens on), the registry can.
    worker_args = ["--s3-endpoint-url", "http://127.0.0.1:1"]
    suite = start_suite(
        tmp_path_factory.mktemp("suite"), extra_env=env, extra_args={"worker": worker_args}
    )
    try:
        for name in SERVICES:
            await wait_serving(suite.address(name), timeout=60)
        yield suite
    finally:
        logs = dump_logs(suite)
        codes = suite.stop()
        if any(codes.values()):
            print(logs)


async def push_with_cli(registry: str, model: str, uri: str, sha256: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modelserve", "models", "--registry", registry,
        "push", model, "--uri", uri, "--sha256", sha256, "--label", "production",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        proc.kill()
        raise
    assert proc.returncode == 0, err.decode()
    return out.decode()


def copy_of(path: Path, note: str) -> bytes:
    """The model at ``path`` with another doc string: the same answers, another sha256."""
    model = onnx.load_model_from_string(path.read_bytes())
    model.doc_string = f"copy for {note}"
    return model.SerializeToString()


async def infer(gateway: str, model: str) -> np.ndarray:
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name=model)
        encode_inputs(request, {"transaction": np.ones((2, 8), np.float32)})
        response = await stub.ModelInfer(request, timeout=10)
    return decode_outputs(response)["fraud_probability"]


async def test_versions_by_reference_serve_through_the_gateway(
    by_ref_suite: Suite, stores: tuple[HttpStore, S3Store], demo_dir: Path
) -> None:
    www, s3 = stores
    # The same model three times, each with its own bytes (the worker's cache is by sha256).
    http_data, s3_data = (copy_of(demo_dir / "fraud_v1.onnx", note) for note in ("http", "s3"))
    http_uri = www.put("fraud.onnx", http_data)
    s3_uri = s3.put("models", "fraud/v1.onnx", s3_data)
    registry = by_ref_suite.address("registry")

    printed = await push_with_cli(registry, "fraud_http", http_uri, sha256_of(http_data))
    async with grpc.aio.insecure_channel(registry) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        pushed = await push_version(
            stub, "fraud_s3", None, sha256=sha256_of(s3_data), artifact_uri=s3_uri
        )
        await push_version(stub, "fraud_uploaded", demo_dir / "fraud_v1.onnx")
    assert f"uri={http_uri}" in printed and pushed.artifact_uri == s3_uri
    await wait_models_ready(
        by_ref_suite.address("gateway"), ["fraud_http", "fraud_s3", "fraud_uploaded"], 120
    )

    gateway = by_ref_suite.address("gateway")
    expected = await infer(gateway, "fraud_uploaded")
    for model in ("fraud_http", "fraud_s3"):
        np.testing.assert_array_equal(await infer(gateway, model), expected)
    # HTTP: once by the registry at push time, once by the worker directly.
    assert www.requests == ["/fraud.onnx", "/fraud.onnx"]
    worker_log = by_ref_suite.processes["worker"].log_path.read_text()
    assert "fraud_s3 v1" in worker_log and "fetching it through the registry" in worker_log
    assert "fetched artifact for fraud_http v1 from" in worker_log
