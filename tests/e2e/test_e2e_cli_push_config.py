"""``modelserve models push`` serving-config flags: what the flags say is what the registry
stores (read back with GetModel), and a malformed flag fails before anything is pushed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc

from modelserve.cli.suite import Suite
from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc

CLI = Path(sys.executable).parent / "modelserve"


async def modelserve(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [str(CLI), *args], capture_output=True, text=True, timeout=60
    )


async def get_model(suite: Suite, name: str) -> registry_pb2.Model:
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        model: registry_pb2.Model = await stub.GetModel(
            registry_pb2.GetModelRequest(name=name), timeout=10
        )
        return model


async def test_push_flags_become_the_versions_serving_config(suite: Suite, demo_dir: Path) -> None:
    result = await modelserve(
        "models", "--registry", suite.address("registry"),
        "push", "cliconf_scored", str(demo_dir / "tabular.onnx"),
        "--max-batch-size", "16",
        "--max-queue-delay-us", "250",
        "--preferred-batch-size", "4",
        "--preferred-batch-size", "8",
        "--max-queue-size", "128",
        "--instances", "2",
        "--execution-provider", "cpu",
        "--prediction-cache-ttl", "30",
        "--feature-input", "INPUT0=cliconf_view:f1,f2,f3@user_id",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = (await get_model(suite, "cliconf_scored")).versions[0].config
    assert config.max_batch_size == 16
    assert config.max_queue_delay_us == 250
    assert list(config.preferred_batch_sizes) == [4, 8]
    assert config.max_queue_size == 128
    assert config.instance_count == 2
    assert config.execution_provider == "cpu"
    assert config.prediction_cache.enabled and config.prediction_cache.ttl_seconds == 30
    [fi] = config.feature_inputs
    assert (fi.model_input, fi.view, list(fi.features), fi.entity_input) == (
        "INPUT0",
        "cliconf_view",
        ["f1", "f2", "f3"],
        "user_id",
    )
    assert fi.entity_datatype == "BYTES"


async def test_push_without_flags_keeps_the_registry_defaults(suite: Suite, demo_dir: Path) -> None:
    registry = suite.address("registry")
    tabular = str(demo_dir / "tabular.onnx")
    result = await modelserve("models", "--registry", registry, "push", "cliconf_plain", tabular)
    assert result.returncode == 0, result.stderr
    config = (await get_model(suite, "cliconf_plain")).versions[0].config
    assert config.max_batch_size == 64 and config.instance_count == 1
    assert not config.prediction_cache.enabled and not config.feature_inputs


async def test_a_malformed_feature_input_flag_fails_before_pushing(
    suite: Suite, demo_dir: Path
) -> None:
    result = await modelserve(
        "models", "--registry", suite.address("registry"),
        "push", "cliconf_bad", str(demo_dir / "tabular.onnx"),
        "--feature-input", "INPUT0=no_features_here",
    )  # fmt: skip
    assert result.returncode == 2
    assert "MODEL_INPUT=VIEW:f1,f2@ENTITY_INPUT" in result.stderr


async def test_an_out_of_range_flag_is_refused_by_the_registry(
    suite: Suite, demo_dir: Path
) -> None:
    result = await modelserve(
        "models", "--registry", suite.address("registry"),
        "push", "cliconf_big", str(demo_dir / "tabular.onnx"), "--max-batch-size", "1000",
    )  # fmt: skip
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr and "max_batch_size" in result.stderr
