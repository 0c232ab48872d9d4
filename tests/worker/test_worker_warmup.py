"""Warmup really runs the model before READY: a real ModelManager fetches real artifacts from
a fake registry on a real grpc.aio server and loads them into real ONNX Runtime sessions; at
the moment each version turns READY (the manager's own on_change hook, called as the state
changes, before any request can reach the version) every instance has completed exactly
``warmup_iterations`` ORT runs at each batch size the batcher may form (``_warm_sizes``), and
none at any other size. A warmup made a no-op leaves the counts empty and this test red.

The counts are ModelSession's own (``runs_by_instance``: completed ORT runs per instance by
rows, counted where the worker calls ``InferenceSession.run``), not a wrapper around ORT.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from grpc import aio
from testsupport import eventually
from worker_testkit import FakeRegistry

from modelserve.catalog.replica import Catalog
from modelserve.channels import EndpointSet
from modelserve.discovery.static import StaticDiscovery
from modelserve.proto.modelserve.v1 import common_pb2, registry_pb2, registry_pb2_grpc, worker_pb2
from worker.artifacts import ArtifactCache
from worker.loader import ModelManager
from worker.sessions import ModelSession

READY = worker_pb2.LoadedVersion.READY
Counts = list[dict[int, int]]


class Spec(NamedTuple):
    file: str
    input: str
    width: int
    output: str
    config: registry_pb2.ServingConfig
    sizes: tuple[int, ...]  # the batch sizes warmup must run


VERSIONS = {
    # Batchable, two instances: powers of two up to the max, the max and a preferred size.
    "fraud": Spec(
        "fraud",
        "transaction",
        8,
        "fraud_probability",
        registry_pb2.ServingConfig(
            max_batch_size=12,
            preferred_batch_sizes=[6],
            instance_count=2,
            warmup_iterations=3,
        ),
        (1, 2, 4, 6, 8, 12),
    ),
    # No batch dimension: batch size 1 only.
    "tabular": Spec(
        "tabular",
        "INPUT0",
        32,
        "OUTPUT0",
        registry_pb2.ServingConfig(max_batch_size=0, instance_count=1, warmup_iterations=2),
        (1,),
    ),
    # warmup_iterations unset (0): the loader still warms once per size.
    "wide": Spec(
        "wide",
        "INPUT0",
        512,
        "OUTPUT0",
        registry_pb2.ServingConfig(max_batch_size=4, instance_count=1, warmup_iterations=0),
        (1, 2, 4),
    ),
}


def record(name: str, path: Path, spec: Spec) -> registry_pb2.ModelVersion:
    data = path.read_bytes()
    return registry_pb2.ModelVersion(
        model=name,
        version=1,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        inputs=[common_pb2.TensorSpec(name=spec.input, datatype="FP32", shape=[-1, spec.width])],
        outputs=[common_pb2.TensorSpec(name=spec.output, datatype="FP32", shape=[-1, -1])],
        config=spec.config,
        platform="onnxruntime_onnx",
    )


@pytest.fixture
async def at_ready(
    model_paths: dict[str, Path], tmp_path: Path
) -> AsyncIterator[tuple[ModelManager, dict[str, Counts]]]:
    """A manager loading VERSIONS, and each version's run counts the moment it was READY."""
    records = [record(n, model_paths[spec.file], spec) for n, spec in VERSIONS.items()]
    fake = FakeRegistry()
    for r, spec in zip(records, VERSIONS.values(), strict=True):
        fake.add(r.model, r.version, model_paths[spec.file].read_bytes())
    registry = aio.server()
    registry_pb2_grpc.add_RegistryServicer_to_server(fake, registry)
    port = registry.add_insecure_port("127.0.0.1:0")
    await registry.start()
    registries = EndpointSet()
    await registries.update([f"127.0.0.1:{port}"])
    catalog = Catalog(StaticDiscovery({}))
    seen: dict[str, Counts] = {}
    managers: list[ModelManager] = []

    def on_change() -> None:
        for held in managers[0].held.values() if managers else ():
            name = held.record.model
            if held.state == READY and name not in seen and held.session is not None:
                seen[name] = held.session.runs_by_instance()

    manager = ModelManager(
        catalog=catalog,
        registries=registries,
        artifacts=ArtifactCache(tmp_path / "artifacts"),
        only_models=set(),
        gpu_mem_limit=0,
        unload_grace=0,
        on_change=on_change,
    )
    managers.append(manager)
    models = [
        registry_pb2.Model(name=r.model, versions=[r], labels={"production": 1}) for r in records
    ]
    catalog.apply(registry_pb2.WatchEvent(revision=1, snapshot=True, models=models))
    try:

        async def all_ready() -> None:
            assert len(manager.ready()) == len(VERSIONS), manager.status_versions()

        await eventually(all_ready, timeout=60)
        yield manager, seen
    finally:
        await manager.close()
        await registries.close()
        await registry.stop(None)


async def test_every_instance_runs_the_model_warmup_iterations_times_per_warm_size_before_ready(
    at_ready: tuple[ModelManager, dict[str, Counts]],
) -> None:
    manager, seen = at_ready
    assert set(seen) == set(VERSIONS)
    for name, spec in VERSIONS.items():
        iterations = max(spec.config.warmup_iterations, 1)
        want = [dict.fromkeys(spec.sizes, iterations)] * max(spec.config.instance_count, 1)
        assert seen[name] == want, f"{name}: runs before READY {seen[name]}, wanted {want}"
        # The counts are the real runs': one request after READY adds one run at its size.
        session = manager.get(name, 1).session
        assert session is not None
        await session.run({spec.input: np.zeros((1, spec.width), np.float32)})
        after = session.runs_by_instance()
        assert sum(c.get(1, 0) for c in after) == sum(c[1] for c in want) + 1


async def test_session_warmup_counts_its_runs_per_instance_and_size(
    model_paths: dict[str, Path],
) -> None:
    session = await ModelSession.load(
        model_paths["fraud"], model="fraud", version=1, instance_count=2
    )
    try:
        assert session.runs_by_instance() == [{}, {}]
        await session.warmup(3, batch_sizes=(1, 4))
        assert session.runs_by_instance() == [{1: 3, 4: 3}, {1: 3, 4: 3}]
        await session.warmup(0, batch_sizes=(2,))  # zero iterations: no run
        assert session.runs_by_instance() == [{1: 3, 4: 3}, {1: 3, 4: 3}]
    finally:
        session.close()
