"""A view's source description and materialisation watermark: validation, persistence in
the catalog's SQLite, and the two RPCs, served for real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from featurestore_testkit import user_view

from featurestore.catalog import MaterializationState, ViewCatalog
from featurestore.views import FeatureSource, FeatureView, view_from_json, view_to_json
from modelserve.errors import InvalidArgumentError, NotFoundError
from modelserve.proto.modelserve.v1 import featurestore_pb2 as fs

Stub = Any  # featurestore_pb2_grpc.FeatureStoreAsyncStub
SOURCE = FeatureSource("parquet", "event_ts", path="s3-mirror/users.parquet")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"format": "json"}, "format must be parquet or csv"),
        ({"event_timestamp_column": ""}, "invalid event timestamp column"),
        ({"created_timestamp_column": "a b"}, "invalid created timestamp column"),
        ({"created_timestamp_column": "ts"}, "must differ from the event timestamp column"),
        ({"path": "x" * 5000}, "at most 4096 printable characters"),
        ({"path": "a\x00b"}, "printable"),
    ],
)
def test_bad_source_is_refused(kwargs: dict[str, str], needle: str) -> None:
    args = {"format": "csv", "event_timestamp_column": "ts"} | kwargs
    with pytest.raises(InvalidArgumentError, match=needle):
        FeatureSource(**args)


@pytest.mark.parametrize("column", ["user_id", "score"])
def test_source_timestamp_column_cannot_be_the_key_or_a_feature(column: str) -> None:
    with pytest.raises(InvalidArgumentError, match=f"timestamp column '{column}' is also"):
        FeatureView(**{**_fields(), "source": FeatureSource("csv", column)})


def _fields() -> dict[str, Any]:
    view = user_view()
    return {k: getattr(view, k) for k in ("name", "entity_key", "entity_type", "features")}


def test_source_round_trips_through_json_and_old_json_still_reads() -> None:
    view = FeatureView(**_fields(), source=SOURCE)
    assert view_from_json(view_to_json(view)) == view
    old = view_to_json(user_view()).replace(',"source":null', "")
    assert '"source"' not in old
    assert view_from_json(old).source is None


async def test_watermark_moves_forward_only_and_persists(db_path: Path) -> None:
    catalog = await ViewCatalog.open(db_path)
    await catalog.apply(user_view())
    assert catalog.materialization("users") == MaterializationState("users")
    first = await catalog.commit_materialization("users", 5_000, 3)
    assert (first.watermark_ms, first.rows_written) == (5_000, 3)
    assert first.committed_ms > 0
    # An older run finishing late does not rewind it.
    second = await catalog.commit_materialization("users", 1_000, 1)
    assert (second.watermark_ms, second.rows_written) == (5_000, 1)
    await catalog.close()

    reopened = await ViewCatalog.open(db_path)
    assert reopened.materialization("users") == second
    with pytest.raises(NotFoundError, match="feature view 'ghost' not found"):
        reopened.materialization("ghost")
    with pytest.raises(InvalidArgumentError, match="up_to_unix_ms -1"):
        await reopened.commit_materialization("users", -1, 0)
    with pytest.raises(InvalidArgumentError, match="rows_written"):
        await reopened.commit_materialization("users", 1, -3)
    await reopened.close()


def users_with_source() -> fs.FeatureView:
    return fs.FeatureView(
        name="users",
        entity_key="user_id",
        entity_type="STRING",
        features=[fs.Feature(name="score", datatype="FP32")],
        source=fs.FeatureSource(
            format="csv",
            path="/data/users.csv",
            event_timestamp_column="ts",
            created_timestamp_column="created",
        ),
    )


async def test_source_and_state_over_grpc(stub: Stub) -> None:
    applied = await stub.ApplyFeatureView(users_with_source())
    assert applied == users_with_source()
    assert await stub.GetFeatureView(fs.GetFeatureViewRequest(name="users")) == applied

    state = await stub.GetMaterializationState(fs.GetMaterializationStateRequest(view="users"))
    assert state == fs.MaterializationState(view="users")
    committed = await stub.CommitMaterialization(
        fs.CommitMaterializationRequest(view="users", up_to_unix_ms=42_000, rows_written=7)
    )
    assert (committed.watermark_unix_ms, committed.rows_written) == (42_000, 7)
    again = await stub.GetMaterializationState(fs.GetMaterializationStateRequest(view="users"))
    assert again == committed

    # A source may change (it is documentation and the client's recipe); the watermark stays.
    moved = users_with_source()
    moved.source.path = "/data/v2/users.csv"
    assert (await stub.ApplyFeatureView(moved)).source.path == "/data/v2/users.csv"
    state = await stub.GetMaterializationState(fs.GetMaterializationStateRequest(view="users"))
    assert state.watermark_unix_ms == 42_000


async def test_bad_source_and_commit_are_invalid_argument(stub: Stub) -> None:
    bad = users_with_source()
    bad.source.format = "xlsx"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ApplyFeatureView(bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "format must be parquet or csv" in (info.value.details() or "")

    await stub.ApplyFeatureView(users_with_source())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CommitMaterialization(
            fs.CommitMaterializationRequest(view="users", up_to_unix_ms=2**60)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
