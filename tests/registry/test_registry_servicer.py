"""The Registry service end to end: real grpc.aio server, real SQLite, real ONNX Runtime."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import onnx
import pytest
from registry_testkit import (
    FRAUD_V1,
    FRAUD_V2,
    Registry,
    eventually,
    expect_status,
    model_bytes,
)

from modelserve.cli import demo_models
from modelserve.proto.modelserve.v1 import registry_pb2

pytestmark = pytest.mark.usefixtures("database_url")

StartRegistry = Callable[..., Awaitable[Registry]]
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED = grpc.StatusCode.FAILED_PRECONDITION


def shapes(specs: object) -> list[tuple[str, str, list[int]]]:
    return [(s.name, s.datatype, list(s.shape)) for s in specs]  # type: ignore[attr-defined]


async def assert_nothing_stored(registry: Registry) -> None:
    listed = await registry.stub.ListModels(registry_pb2.ListModelsRequest())
    assert list(listed.models) == []
    assert registry.artifact_files() == []
    assert registry.temp_entries() == []


async def test_push_two_versions(registry: Registry) -> None:
    v1 = await registry.push("fraud", FRAUD_V1, labels=["production"], description="first")
    v2 = await registry.push("fraud", FRAUD_V2, chunk_size=100, parent_version=1)
    assert (v1.model, v1.version, v2.version) == ("fraud", 1, 2)
    for pushed, data in ((v1, FRAUD_V1), (v2, FRAUD_V2)):
        assert pushed.sha256 == hashlib.sha256(data).hexdigest()
        assert pushed.size_bytes == len(data)
        assert shapes(pushed.inputs) == [("transaction", "FP32", [-1, 8])]
        assert shapes(pushed.outputs) == [("fraud_probability", "FP32", [-1, 1])]
        assert pushed.platform == "onnxruntime_onnx"
        assert pushed.config.max_batch_size == 64 and pushed.config.instance_count == 1
        assert pushed.config.warmup_iterations == 3 and pushed.config.execution_provider == "auto"
    assert list(v1.labels) == ["production"] and v1.description == "first"
    assert v2.parent_version == 1 and v2.created_unix_ms >= v1.created_unix_ms
    model = await registry.stub.GetModel(registry_pb2.GetModelRequest(name="fraud"))
    assert [v.version for v in model.versions] == [1, 2]
    assert dict(model.labels) == {"production": 1}
    assert registry.temp_entries() == []


async def test_config_overrides_in_the_header(registry: Registry) -> None:
    config = registry_pb2.ServingConfig(
        max_batch_size=16, preferred_batch_sizes=[8, 16], execution_provider="cpu"
    )
    pushed = await registry.push("fraud", FRAUD_V1, config=config)
    assert pushed.config.max_batch_size == 16 and list(pushed.config.preferred_batch_sizes) == [
        8,
        16,
    ]
    assert pushed.config.execution_provider == "cpu" and pushed.config.max_queue_size == 64
    bad = registry_pb2.ServingConfig(instance_count=99)
    await expect_status(
        registry.push("fraud", FRAUD_V2, config=bad), INVALID, "instance_count", "got 99"
    )


async def test_a_file_that_is_not_onnx_is_refused_and_nothing_is_stored(
    registry: Registry,
) -> None:
    await expect_status(registry.push("fraud", b"not an onnx model" * 100), FAILED, "not an ONNX")
    await assert_nothing_stored(registry)


async def test_a_model_with_external_data_is_refused_and_nothing_is_stored(
    registry: Registry, tmp_path: Path
) -> None:
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(
        demo_models.fraud(1), path, save_as_external_data=True, location="w.bin", size_threshold=0
    )
    await expect_status(registry.push("fraud", path.read_bytes()), FAILED, "external data")
    await assert_nothing_stored(registry)


# Every filesystem event (open, mkdir, rename, remove, listdir, ...) this process makes while
# ``_spying`` is on, by path: the T36 spy. Audit hooks cannot be removed, so one is added once.
_fs_events: list[tuple[str, str]] = []
_spying = False
_FS_EVENTS = {
    "open",
    "os.mkdir",
    "os.rename",
    "os.remove",
    "os.rmdir",
    "os.listdir",
    "os.scandir",
    "os.chmod",
    "os.truncate",
    "os.link",
    "os.symlink",
    "shutil.rmtree",
}


def _spy(event: str, args: tuple[object, ...]) -> None:
    if _spying and event in _FS_EVENTS and args and isinstance(args[0], (str, bytes, Path)):
        _fs_events.append((event, str(args[0])))


sys.addaudithook(_spy)
T36_NAMES = [
    "../x",
    "",
    "a" * 200,
    "%2e%2e%2f",
    "model/",
    "/etc/passwd",
    "a/../b",
    " ..",
    ".. ",
    "x" * 300,
    "fr\u0430ud",
    "nul\x00",
    "...",
]


@pytest.mark.parametrize("name", T36_NAMES)
async def test_bad_model_names_are_invalid_argument_on_every_rpc(
    registry: Registry, name: str
) -> None:
    global _spying
    _fs_events.clear()
    _spying = True
    try:
        await _every_rpc_with(registry, name)
    finally:
        _spying = False
    # Refused before any filesystem access (the data dir, or anywhere else).
    assert not _fs_events, _fs_events
    await assert_nothing_stored(registry)


async def test_an_odd_but_valid_name_is_looked_up_and_not_found(registry: Registry) -> None:
    await expect_status(
        registry.stub.GetModel(registry_pb2.GetModelRequest(name="model..1")), NOT_FOUND
    )


async def _every_rpc_with(registry: Registry, name: str) -> None:
    stub = registry.stub
    await expect_status(registry.push(name, FRAUD_V1), INVALID, "invalid model name")
    await expect_status(stub.GetModel(registry_pb2.GetModelRequest(name=name)), INVALID)
    await expect_status(stub.GetVersion(registry_pb2.GetVersionRequest(model=name)), INVALID)
    await expect_status(
        stub.SetLabel(registry_pb2.SetLabelRequest(model=name, label="p", version=1)), INVALID
    )
    await expect_status(
        stub.DeleteLabel(registry_pb2.DeleteLabelRequest(model=name, label="p")), INVALID
    )
    await expect_status(registry.fetch(name), INVALID)
    await expect_status(registry.push("fraud", FRAUD_V1, labels=[name]), INVALID, "invalid label")


async def test_malformed_uploads_are_invalid_argument(start_registry: StartRegistry) -> None:
    registry = await start_registry(max_artifact_bytes=len(FRAUD_V1) - 1)
    header = registry_pb2.PushVersionRequest(
        header=registry_pb2.PushVersionRequest.Header(model="fraud")
    )
    chunk = registry_pb2.PushVersionRequest(chunk=FRAUD_V1)
    await expect_status(registry.push_raw([chunk]), INVALID, "must carry the header")
    await expect_status(registry.push_raw([]), INVALID, "empty upload")
    await expect_status(registry.push_raw([header]), INVALID, "no artifact bytes")
    await expect_status(registry.push_raw([header, header]), INVALID, "got a header")
    empty = registry_pb2.PushVersionRequest(chunk=b"")
    await expect_status(registry.push_raw([header, empty]), INVALID, "an empty chunk")
    await expect_status(
        registry.push("fraud", FRAUD_V1), INVALID, f"limit {len(FRAUD_V1) - 1} bytes"
    )
    await assert_nothing_stored(registry)


async def test_a_push_cancelled_mid_upload_leaves_nothing_behind(registry: Registry) -> None:
    # Cancelling lands at a different point of the handler each time; repeat to cover them.
    for _ in range(20):
        sent = asyncio.Event()
        never = asyncio.Event()

        async def stalled() -> AsyncIterator[registry_pb2.PushVersionRequest]:
            header = registry_pb2.PushVersionRequest.Header(model="fraud")
            yield registry_pb2.PushVersionRequest(header=header)
            yield registry_pb2.PushVersionRequest(chunk=FRAUD_V1[:100])
            sent.set()  # noqa: B023 -- each round's generator runs within its round
            await never.wait()  # noqa: B023 -- the client stalls, then gives up

        call = registry.stub.PushVersion(stalled())
        await sent.wait()
        await eventually(lambda: any(p.iterdir() for p in registry.temp_entries()))
        call.cancel()
        await eventually(lambda: registry.temp_entries() == [], within=2)
    await assert_nothing_stored(registry)


async def test_a_sha256_mismatch_fails_the_push(registry: Registry) -> None:
    wrong = hashlib.sha256(FRAUD_V2).hexdigest()
    await expect_status(registry.push("fraud", FRAUD_V1, sha256=wrong), FAILED, "sha256 mismatch")
    await expect_status(registry.push("fraud", FRAUD_V1, sha256="abc"), INVALID, "64 lowercase")
    await assert_nothing_stored(registry)
    right = hashlib.sha256(FRAUD_V1).hexdigest()
    assert (await registry.push("fraud", FRAUD_V1, sha256=right.upper())).sha256 == right


async def test_labels_set_move_delete_and_resolution(registry: Registry) -> None:
    stub = registry.stub
    await registry.push("fraud", FRAUD_V1)
    await registry.push("fraud", FRAUD_V2, labels=["staging"])

    async def resolve(version: int = 0, label: str = "") -> int:
        request = registry_pb2.GetVersionRequest(model="fraud", version=version, label=label)
        return int((await stub.GetVersion(request)).version)

    assert await resolve() == 2  # no production label: newest
    model = await stub.SetLabel(
        registry_pb2.SetLabelRequest(model="fraud", label="production", version=1)
    )
    assert dict(model.labels) == {"production": 1, "staging": 2}
    assert await resolve() == 1 and await resolve(label="staging") == 2 and await resolve(2) == 2
    model = await stub.SetLabel(
        registry_pb2.SetLabelRequest(model="fraud", label="production", version=2)
    )
    assert dict(model.labels) == {"production": 2, "staging": 2}
    assert [list(v.labels) for v in model.versions] == [[], ["production", "staging"]]
    model = await stub.DeleteLabel(registry_pb2.DeleteLabelRequest(model="fraud", label="staging"))
    assert dict(model.labels) == {"production": 2}
    await expect_status(
        stub.GetVersion(
            registry_pb2.GetVersionRequest(model="fraud", version=1, label="production")
        ),
        INVALID,
        "not both",
    )


async def test_unknown_model_version_or_label_is_not_found_on_every_rpc(
    registry: Registry,
) -> None:
    stub = registry.stub
    await registry.push("fraud", FRAUD_V1, labels=["production"])
    unknown = "unknown model 'nope' (models: fraud)"
    await expect_status(
        stub.GetModel(registry_pb2.GetModelRequest(name="nope")), NOT_FOUND, unknown
    )
    await expect_status(
        stub.GetVersion(registry_pb2.GetVersionRequest(model="nope")), NOT_FOUND, unknown
    )
    await expect_status(
        stub.SetLabel(registry_pb2.SetLabelRequest(model="nope", label="p", version=1)),
        NOT_FOUND,
        unknown,
    )
    await expect_status(
        stub.DeleteLabel(registry_pb2.DeleteLabelRequest(model="nope", label="p")),
        NOT_FOUND,
        unknown,
    )
    await expect_status(registry.fetch("nope"), NOT_FOUND, unknown)
    await expect_status(registry.push("nope", FRAUD_V1, parent_version=1), NOT_FOUND, unknown)

    no_v7 = "model 'fraud' has no version 7 (versions: 1)"
    await expect_status(
        stub.GetVersion(registry_pb2.GetVersionRequest(model="fraud", version=7)), NOT_FOUND, no_v7
    )
    await expect_status(
        stub.SetLabel(registry_pb2.SetLabelRequest(model="fraud", label="p", version=7)),
        NOT_FOUND,
        no_v7,
    )
    await expect_status(registry.fetch("fraud", 7), NOT_FOUND, no_v7)
    await expect_status(registry.push("fraud", FRAUD_V2, parent_version=7), NOT_FOUND, no_v7)

    no_label = "model 'fraud' has no label 'canary' (labels: production)"
    await expect_status(
        stub.GetVersion(registry_pb2.GetVersionRequest(model="fraud", label="canary")),
        NOT_FOUND,
        no_label,
    )
    await expect_status(
        stub.DeleteLabel(registry_pb2.DeleteLabelRequest(model="fraud", label="canary")),
        NOT_FOUND,
        no_label,
    )
    model = await stub.GetModel(registry_pb2.GetModelRequest(name="fraud"))
    assert [v.version for v in model.versions] == [1]  # failed pushes stored nothing


async def test_fetch_artifact_returns_the_exact_bytes_in_1_mib_chunks(registry: Registry) -> None:
    wide = model_bytes(demo_models.wide())  # ~20 MiB: many chunks
    await registry.push("fraud", FRAUD_V1, labels=["production"])
    await registry.push("wide", wide, chunk_size=1 << 20)
    chunks = await registry.fetch("wide", 1)
    assert b"".join(c.data for c in chunks) == wide
    assert len(chunks) == -(-len(wide) // (1 << 20))
    assert all(len(c.data) == 1 << 20 for c in chunks[:-1])
    assert chunks[0].sha256 == hashlib.sha256(wide).hexdigest()
    assert chunks[0].size_bytes == len(wide)
    assert all(not c.sha256 and not c.size_bytes for c in chunks[1:])
    default = await registry.fetch("fraud")  # version 0: the production version
    assert b"".join(c.data for c in default) == FRAUD_V1


async def test_a_restart_keeps_models_labels_and_artifacts(start_registry: StartRegistry) -> None:
    first = await start_registry()
    await first.push("fraud", FRAUD_V1, labels=["production"])
    await first.push("fraud", FRAUD_V2, labels=["staging"])
    await first.push("tabular", model_bytes(demo_models.tabular()))
    before = await first.stub.ListModels(registry_pb2.ListModelsRequest())
    await first.stop()

    second = await start_registry(first.data_dir)
    after = await second.stub.ListModels(registry_pb2.ListModelsRequest())
    assert after == before and len(after.models) == 2
    assert b"".join(c.data for c in await second.fetch("fraud", 2)) == FRAUD_V2
    staging = await second.stub.GetVersion(
        registry_pb2.GetVersionRequest(model="fraud", label="staging")
    )
    assert staging.version == 2
    assert (await second.push("fraud", FRAUD_V1)).version == 3
