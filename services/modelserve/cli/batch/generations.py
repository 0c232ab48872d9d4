"""Generations of a batch lookup model: which one is live, expiring the old ones, rollback.

Each publish of NAME is a generation: a feature view ``NAME.RUN_ID`` and a lookup version
reading it, whose description (JSON) names the batch run and the view. ``production`` points
at the live one. After a switch, ``expire`` deletes the views of every generation but the new
one and the one it replaced; ``rollback`` moves ``production`` back to the newest older
generation whose view still exists. The registry has no version delete, so expired
generations' versions stay listed (asked for by number they answer FAILED_PRECONDITION).
"""

from __future__ import annotations

import json
from typing import Any

import grpc

from modelserve.catalog.lookups import PLATFORM
from modelserve.catalog.replica import DEFAULT_LABEL
from modelserve.cli import connect
from modelserve.cli.batch.columns import BatchInputError
from modelserve.proto.modelserve.v1 import (
    featurestore_pb2,
    featurestore_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)


async def check_target(registry: str, name: str) -> None:
    """Before scoring: NAME must be new or a lookup model (never replace an ONNX model)."""
    async with connect.channel(registry) as channel:
        await production_version(registry_pb2_grpc.RegistryStub(channel), name)


async def production_version(stub: registry_pb2_grpc.RegistryStub, name: str) -> int:
    """The version ``production`` points at now (0: no such model or label yet)."""
    try:
        model = await stub.GetModel(registry_pb2.GetModelRequest(name=name), timeout=10)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return 0
        raise
    if any(v.platform != PLATFORM for v in model.versions):
        raise BatchInputError(f"--publish-lookup {name!r}: that model has non-lookup versions")
    return int(model.labels.get(DEFAULT_LABEL, 0))


def _view_of(version: registry_pb2.ModelVersion) -> str:
    """The generation's view, from the description batch publishing writes (else "")."""
    try:
        doc = json.loads(version.description)
    except ValueError:
        return ""
    return str(doc.get("view", "")) if isinstance(doc, dict) and "batch_run" in doc else ""


async def expire(
    stub: registry_pb2_grpc.RegistryStub,
    fs: featurestore_pb2_grpc.FeatureStoreStub,
    name: str,
    *,
    keep: set[int],
) -> list[str]:
    """Delete the views of every batch generation of ``name`` but the new one and the one it
    replaced (kept for rollback). The versions stay in the registry (it has no delete); their
    views are gone, so rollback skips them."""
    model = await stub.GetModel(registry_pb2.GetModelRequest(name=name), timeout=10)
    kept = {_view_of(v) for v in model.versions if v.version in keep}
    expired = []
    for v in model.versions:
        view = _view_of(v)
        if v.version in keep or not view or view in kept:
            continue
        try:
            await fs.DeleteFeatureView(
                featurestore_pb2.DeleteFeatureViewRequest(name=view), timeout=300
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            continue  # expired by an earlier run
        expired.append(view)
    return expired


async def rollback(registry: str, name: str, featurestore: str) -> dict[str, Any]:
    """Move ``production`` of lookup model NAME back to the newest generation older than the
    current one whose view still exists."""
    async with (
        connect.channel(registry) as channel,
        connect.channel(featurestore) as fs_channel,
    ):
        stub = registry_pb2_grpc.RegistryStub(channel)
        fs = featurestore_pb2_grpc.FeatureStoreStub(fs_channel)
        try:
            model = await stub.GetModel(registry_pb2.GetModelRequest(name=name), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise BatchInputError(f"unknown lookup model {name!r}") from None
            raise
        lookups = sorted(
            (v for v in model.versions if v.platform == PLATFORM), key=lambda v: v.version
        )
        current = model.labels.get(DEFAULT_LABEL, lookups[-1].version if lookups else 0)
        target = 0
        for v in reversed([v for v in lookups if v.version < current]):
            if await _view_exists(fs, v.config.lookup.view):
                target = v.version
                break
        if not target:
            raise BatchInputError(
                f"lookup model {name!r} has no generation before version {current} to roll "
                "back to (older generations are expired)"
            )
        await stub.SetLabel(
            registry_pb2.SetLabelRequest(model=name, label=DEFAULT_LABEL, version=target),
            timeout=10,
        )
    return {"lookup_model": name, "from_version": current, "to_version": target}


async def _view_exists(fs: featurestore_pb2_grpc.FeatureStoreStub, view: str) -> bool:
    try:
        await fs.GetFeatureView(featurestore_pb2.GetFeatureViewRequest(name=view), timeout=10)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True
