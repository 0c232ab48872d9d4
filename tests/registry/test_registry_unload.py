"""Unloading and loading a model (SetModelLoaded): persisted, announced with the model, no
revision for a no-op, and a schema-2 database gains the column."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from registry_testkit import (
    FRAUD_V1,
    Registry,
    expect_status,
    make_legacy_sqlite,
    open_store,
    push_direct,
)

from modelserve.errors import NotFoundError
from modelserve.proto.modelserve.v1 import registry_pb2
from registry.records import ChangeEvent
from registry.store import RegistryStore

pytestmark = pytest.mark.usefixtures("database_url")


def test_unload_is_persisted_announced_and_idempotent(tmp_path: Path) -> None:
    events: list[ChangeEvent] = []
    store = open_store(tmp_path / "data", on_change=events.append)
    try:
        push_direct(store, "fraud", FRAUD_V1)
        assert not store.get_model("fraud").unloaded
        revision = store.revision()
        assert store.set_model_loaded("fraud", False).unloaded
        assert store.revision() == revision + 1
        assert events[-1].models[0].name == "fraud" and events[-1].models[0].unloaded
        store.set_model_loaded("fraud", False)  # already so: no change
        assert store.revision() == revision + 1
        with pytest.raises(NotFoundError, match="unknown model 'nope'"):
            store.set_model_loaded("nope", False)
    finally:
        store.close()
    reopened = open_store(tmp_path / "data")
    try:
        assert reopened.get_model("fraud").unloaded
        assert [m.unloaded for m in reopened.snapshot().models] == [True]
        assert not reopened.set_model_loaded("fraud", True).unloaded
    finally:
        reopened.close()


def test_a_schema_2_database_gains_the_unloaded_column(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path / "data")
    push_direct(store, "fraud", FRAUD_V1)
    store.close()
    make_legacy_sqlite(tmp_path / "data" / "registry.sqlite3", 2)
    store = RegistryStore(tmp_path / "data")
    try:
        assert not store.get_model("fraud").unloaded
        assert store.set_model_loaded("fraud", False).unloaded
    finally:
        store.close()


async def test_set_model_loaded_rpc(registry: Registry) -> None:
    await registry.push("fraud", FRAUD_V1)
    model = await registry.stub.SetModelLoaded(
        registry_pb2.SetModelLoadedRequest(model="fraud", loaded=False)
    )
    assert model.unloaded and model.name == "fraud"
    listed = await registry.stub.ListModels(registry_pb2.ListModelsRequest())
    assert [m.unloaded for m in listed.models] == [True]
    await expect_status(
        registry.stub.SetModelLoaded(registry_pb2.SetModelLoadedRequest(model="x", loaded=True)),
        grpc.StatusCode.NOT_FOUND,
        "unknown model 'x'",
    )
