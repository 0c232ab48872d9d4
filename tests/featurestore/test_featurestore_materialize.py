"""Materialisation end to end: Parquet/CSV files written with pyarrow in tmp_path, a real
FeatureStore served on 127.0.0.1:0, both online stores (SQLite and the real Redis)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from featurestore_testkit import now_ms, served

from featurestore.catalog import ViewCatalog
from featurestore.online_store import OnlineStore
from modelserve.cli.feature_sources import SourceError
from modelserve.cli.materialize import (
    MaterializationPlan,
    materialize,
    plan,
    write_batches,
    write_requests,
)
from modelserve.proto.modelserve.v1 import featurestore_pb2 as fs
from modelserve.tensors import from_proto_tensor, to_proto_tensor

Stub = Any  # featurestore_pb2_grpc.FeatureStoreAsyncStub
MIN = 60_000


def users_view(
    fmt: str = "parquet", entity_type: str = "STRING", ttl_seconds: int = 3600
) -> fs.FeatureView:
    return fs.FeatureView(
        name="users",
        entity_key="user_id",
        entity_type=entity_type,
        ttl_seconds=ttl_seconds,
        features=[
            fs.Feature(name="score", datatype="FP32", default_raw=struct.pack("<f", 1.5)),
            fs.Feature(name="counts", datatype="INT64", shape=[3] if fmt == "parquet" else []),
            fs.Feature(name="country", datatype="BYTES"),
        ],
        source=fs.FeatureSource(format=fmt, event_timestamp_column="event_ts"),
    )


def write_parquet(path: Path, rows: list[tuple[str, int, float]], row_group_size: int = 4) -> Path:
    """rows: (entity, event unix ms, score); counts and country derive from the score."""
    pq.write_table(
        pa.table(
            {
                "user_id": [r[0] for r in rows],
                "event_ts": pa.array([r[1] for r in rows], pa.timestamp("ms", tz="UTC")),
                "score": pa.array([r[2] for r in rows], pa.float32()),
                "counts": pa.array([[int(r[2])] * 3 for r in rows], pa.list_(pa.int64())),
                "country": [f"c{r[2]:g}" for r in rows],
            }
        ),
        path,
        row_group_size=row_group_size,
    )
    return path


async def lookup(stub: Stub, keys: list[str]) -> dict[str, tuple[Any, int]]:
    """entity -> ((score, counts, country), status of score)."""
    reply = await stub.GetOnlineFeatures(
        fs.GetOnlineFeaturesRequest(view="users", entity_keys=keys)
    )
    score, counts, country = (from_proto_tensor(r.values) for r in reply.results)
    status = reply.results[0].status
    return {
        key: ((float(score[i]), counts[i].tolist(), country[i]), status[i])
        for i, key in enumerate(keys)
    }


async def watermark(stub: Stub) -> int:
    request = fs.GetMaterializationStateRequest(view="users")
    return int((await stub.GetMaterializationState(request)).watermark_unix_ms)


async def run(stub: Stub, source: Path, end_ms: int, **kw: Any) -> Any:
    return await materialize(
        stub, "users", start_ms=0, end_ms=end_ms, source=source, progress=False, **kw
    )


async def test_materialize_parquet_then_lookup(stub: Stub, tmp_path: Path) -> None:
    await stub.ApplyFeatureView(users_view())
    t = now_ms()
    src = write_parquet(
        tmp_path / "users.parquet",
        [("a", t - 10 * MIN, 1), ("b", t - 120 * MIN, 3), ("a", t - 5 * MIN, 2), ("c", t - MIN, 4)],
        row_group_size=1,
    )
    report = await run(stub, src, t + 1000)
    assert (report.rows_read, report.rows_in_window, report.entities, report.written) == (
        4,
        4,
        3,
        3,
    )
    assert report.watermark_before_ms == 0 and report.watermark_after_ms == t + 1000

    got = await lookup(stub, ["a", "b", "c", "zz"])
    assert got["a"] == ((2.0, [2, 2, 2], b"c2"), fs.PRESENT)  # the newest row of "a"
    assert got["b"] == ((1.5, [0, 0, 0], b""), fs.EXPIRED)  # 2 h old, ttl 1 h: the default
    assert got["c"] == ((4.0, [4, 4, 4], b"c4"), fs.PRESENT)
    assert got["zz"] == ((1.5, [0, 0, 0], b""), fs.MISSING)
    assert await watermark(stub) == t + 1000


async def test_second_run_writes_only_newer_rows(stub: Stub, tmp_path: Path) -> None:
    await stub.ApplyFeatureView(users_view())
    t = now_ms()
    first = [("a", t - 30 * MIN, 1), ("b", t - 29 * MIN, 2), ("c", t - 28 * MIN, 3)]
    await run(stub, write_parquet(tmp_path / "v1.parquet", first), t - 20 * MIN)

    # The file grows: "a" changes, "d" appears; "b" and "c" are as before.
    second = [*first, ("a", t - 10 * MIN, 11), ("d", t - 9 * MIN, 12)]
    report = await run(stub, write_parquet(tmp_path / "v2.parquet", second), t)
    assert (report.rows_read, report.rows_in_window, report.entities, report.written) == (
        5,
        2,
        2,
        2,
    )
    assert report.from_ms == t - 20 * MIN
    got = await lookup(stub, ["a", "b", "d"])
    assert [got[k][0][0] for k in "abd"] == [11.0, 2.0, 12.0]

    nothing_new = await run(stub, tmp_path / "v2.parquet", t + 1)
    assert (nothing_new.entities, nothing_new.written, await watermark(stub)) == (0, 0, t + 1)

    # --full rewrites the window; the same events again are idempotent.
    full = await run(stub, tmp_path / "v2.parquet", t + 1, ignore_watermark=True)
    assert (full.entities, full.written) == (4, 4)
    assert [v[0][0] for v in (await lookup(stub, ["a", "b", "c", "d"])).values()] == [
        11.0,
        2.0,
        3.0,
        12.0,
    ]


async def test_pushed_newer_rows_win_over_materialised_older_ones(
    stub: Stub, tmp_path: Path
) -> None:
    await stub.ApplyFeatureView(users_view())
    t = now_ms()
    columns = {
        "score": np.float32([99]),
        "counts": np.int64([[9, 9, 9]]),
        "country": np.array([b"pushed"], dtype=object),
    }
    await stub.WriteOnlineFeatures(  # the push path, as a streaming job would use it
        fs.WriteOnlineFeaturesRequest(
            view="users",
            entity_keys=["a"],
            values=[to_proto_tensor(n, v) for n, v in columns.items()],
            event_unix_ms=[t - MIN],
        )
    )
    src = write_parquet(tmp_path / "u.parquet", [("a", t - 5 * MIN, 1), ("b", t - 5 * MIN, 2)])
    report = await run(stub, src, t)
    assert (report.entities, report.written) == (2, 1)  # "a" was older than the pushed row
    assert (await lookup(stub, ["a"]))["a"][0] == (99.0, [9, 9, 9], b"pushed")


def bad_table(good: pa.Table, defect: str) -> pa.Table:
    n, keys = good.num_rows, good.column("user_id").to_pylist()
    if defect == "missing column":
        return good.drop_columns(["country"])
    if defect == "wrong type":
        return good.set_column(2, "score", pa.array(np.arange(n, dtype=np.float64)))
    # Only the very last row is bad: a streaming writer would have written the others.
    if defect == "null key":
        return good.set_column(0, "user_id", pa.array([*keys[:-1], None], pa.string()))
    short = pa.array([[1, 2, 3]] * (n - 1) + [[1]], pa.list_(pa.int64()))
    return good.set_column(3, "counts", short)


@pytest.mark.parametrize("defect", ["missing column", "wrong type", "null key", "short vector"])
async def test_bad_file_writes_nothing(stub: Stub, tmp_path: Path, defect: str) -> None:
    await stub.ApplyFeatureView(users_view())
    t = now_ms()
    rows = [(f"u{i}", t - (100 - i) * 1000, float(i)) for i in range(40)]
    good = pq.read_table(write_parquet(tmp_path / "good.parquet", rows))
    path = tmp_path / "bad.parquet"
    pq.write_table(bad_table(good, defect), path, row_group_size=4)
    with pytest.raises(SourceError) as info:
        await run(stub, path, t)
    assert str(path) in str(info.value)
    got = await lookup(stub, [f"u{i}" for i in range(40)])
    assert {status for _, status in got.values()} == {fs.MISSING}
    assert await watermark(stub) == 0


async def test_failure_half_way_leaves_old_or_new_and_a_rerun_completes(
    catalog: ViewCatalog, online_store: OnlineStore, tmp_path: Path
) -> None:
    t = now_ms()
    keys = [f"u{i:02d}" for i in range(20)]
    old = write_parquet(
        tmp_path / "old.parquet", [(k, t - 40 * MIN, i) for i, k in enumerate(keys)]
    )
    new = write_parquet(
        tmp_path / "new.parquet", [(k, t - MIN, 100 + i) for i, k in enumerate(keys)]
    )
    async with served(catalog, online_store) as (_, stub):
        await stub.ApplyFeatureView(users_view())
        await run(stub, old, t - 30 * MIN)

    async with served(catalog, online_store) as (server, stub):
        p = await plan(stub, "users", start_ms=0, end_ms=t, source=new)
        landed = 0
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for batch in write_batches(stub, p, batch_rows=5):
                landed += batch.sent
                await server.stop(None)  # the feature store goes away after the first batch
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert landed == 5

    async with served(catalog, online_store) as (_, stub):
        got = await lookup(stub, keys)
        versions = []
        for i, key in enumerate(keys):
            (score, counts, country), status = got[key]
            assert status == fs.PRESENT
            # One row per entity: all its features are from the same version.
            assert (score, counts, country) in [
                (float(i), [i] * 3, f"c{i}".encode()),
                (100.0 + i, [100 + i] * 3, f"c{100 + i}".encode()),
            ]
            versions.append("new" if score >= 100 else "old")
        assert versions.count("new") == 5
        assert await watermark(stub) == t - 30 * MIN  # the failed run did not move it

        report = await run(stub, new, t)
        assert (report.entities, report.written, report.watermark_after_ms) == (20, 20, t)
        got = await lookup(stub, keys)
        assert [got[k][0][0] for k in keys] == [100.0 + i for i in range(20)]


async def test_csv_source_with_int64_keys(stub: Stub, tmp_path: Path) -> None:
    await stub.ApplyFeatureView(users_view("csv", entity_type="INT64", ttl_seconds=0))
    path = tmp_path / "users.csv"
    path.write_text(
        "user_id,event_ts,score,counts,country\n"
        "7,2024-05-01T10:00:00Z,1.25,3,de\n"
        "0042,2024-05-01T10:00:00Z,2.5,4,fr\n"
        "7,2024-05-01T11:00:00Z,3.75,5,it\n"
    )
    report = await run(stub, path, 2_000_000_000_000)
    assert (report.rows_read, report.entities, report.written) == (3, 2, 2)
    reply = await stub.GetOnlineFeatures(
        fs.GetOnlineFeaturesRequest(view="users", entity_keys=["007", "42", "8"])
    )
    assert from_proto_tensor(reply.results[0].values).tolist() == [3.75, 2.5, 1.5]
    assert from_proto_tensor(reply.results[2].values).tolist() == [b"it", b"fr", b""]

    path.write_text("user_id,event_ts,score,counts,country\nseven,2024-05-01T10:00:00Z,1,3,de\n")
    with pytest.raises(SourceError, match="CSV conversion error to int64"):
        await run(stub, path, 2_000_000_000_000)


async def test_a_view_without_source_or_file_is_refused(stub: Stub, tmp_path: Path) -> None:
    view = users_view()
    view.ClearField("source")
    await stub.ApplyFeatureView(view)
    with pytest.raises(SourceError, match="has no source"):
        await run(stub, tmp_path / "x.parquet", 1000)
    await stub.ApplyFeatureView(users_view())  # a source without a path: --source is needed
    with pytest.raises(SourceError, match="names no source file"):
        await materialize(stub, "users", start_ms=0, end_ms=1000, progress=False)
    with pytest.raises(ValueError, match="must be non-empty"):
        await run(stub, tmp_path / "x.parquet", 0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await materialize(stub, "ghost", start_ms=0, end_ms=1000, progress=False)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_batches_respect_row_and_byte_bounds(stub: Stub, tmp_path: Path) -> None:
    await stub.ApplyFeatureView(users_view())
    t = now_ms()
    src = write_parquet(tmp_path / "u.parquet", [(f"u{i}", t, i) for i in range(50)])
    p: MaterializationPlan = await plan(stub, "users", start_ms=0, end_ms=t + 1, source=src)
    sizes = [len(r.entity_keys) for r in write_requests(p, batch_rows=8)]
    assert sizes == [8] * 6 + [2]
    requests = list(write_requests(p, batch_rows=50, batch_bytes=600))
    assert all(r.ByteSize() <= 600 for r in requests) and len(requests) > 2
    assert sum(len(r.entity_keys) for r in requests) == 50
    assert len(list(write_requests(p, batch_bytes=1))) == 50  # one row each, however large
