"""The whole suite as real processes on loopback ports, started by the same launcher as
``modelserve up`` (modelserve.cli.suite), with the demo models registered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from suitesupport import dump_logs, ready_suite

from modelserve.cli.suite import Suite, start_suite
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc


@pytest.fixture(scope="session")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    """One suite for the session: registry, featurestore, worker, router, gateway."""
    data_dir: Path = tmp_path_factory.mktemp("suite")
    running = start_suite(data_dir, workers=1)
    try:
        asyncio.run(ready_suite(running))
    except BaseException:
        print(dump_logs(running))
        running.stop(timeout=10)
        raise
    yield running
    codes = running.stop()
    assert all(code == 0 for code in codes.values()), (
        f"unclean exits: {codes}\n{dump_logs(running)}"
    )


@pytest.fixture
async def gateway(suite: Suite) -> AsyncIterator[pb_grpc.GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)
