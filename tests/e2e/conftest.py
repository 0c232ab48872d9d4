"""The whole suite as real processes on loopback ports, started by the same launcher as
``modelserve up`` (modelserve.suite), with the demo models registered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from modelserve.proto.inference import grpc_service_pb2_grpc as pb_grpc
from modelserve.suite import SERVICES, Suite, start_suite, wait_serving
from modelserve.up import register_demo_models, wait_models_ready


def dump_logs(suite: Suite) -> str:
    out = []
    for name, proc in suite.processes.items():
        text = proc.log_path.read_text(errors="replace") if proc.log_path.exists() else ""
        out.append(f"----- {name} -----\n{text[-4000:]}")
    return "\n".join(out)


async def ready_suite(suite: Suite) -> Suite:
    for name in SERVICES:
        await wait_serving(suite.address(name), timeout=60)
    names = await register_demo_models(suite.address("registry"), suite.data_dir)
    await wait_models_ready(suite.address("gateway"), names, timeout=120)
    return suite


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
