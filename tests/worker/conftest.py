"""Worker fixtures: demo ONNX files on disk and a fake registry on a real grpc.aio server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpc import aio
from worker_testkit import FakeRegistry, RegistryServer, write_model

from modelserve.cli import demo_models
from modelserve.proto.modelserve.v1 import registry_pb2_grpc


@pytest.fixture(scope="session")
def model_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fraud (v1), tabular, wide and dtypes written once for the whole session."""
    directory = tmp_path_factory.mktemp("models")
    return {
        "fraud": write_model(directory, "fraud", demo_models.fraud(1)),
        "tabular": write_model(directory, "tabular", demo_models.tabular()),
        "wide": write_model(directory, "wide", demo_models.wide()),
        "dtypes": write_model(directory, "dtypes", demo_models.dtypes()),
    }


@pytest.fixture
async def registry() -> AsyncIterator[RegistryServer]:
    fake = FakeRegistry()
    server = aio.server()
    registry_pb2_grpc.add_RegistryServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield RegistryServer(fake, registry_pb2_grpc.RegistryStub(channel))
    finally:
        await channel.close()
        await server.stop(None)
