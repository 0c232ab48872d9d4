"""Reading offline sources client-side: column checks, conversions, newest row per entity.

Real Parquet and CSV files written in tmp_path with pyarrow; no server involved.
"""

from __future__ import annotations

import datetime as dt
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelserve.cli import feature_sources
from modelserve.cli.feature_sources import SourceError, SourceSpec, read_latest
from modelserve.cli.features import parse_view_json
from modelserve.proto.modelserve.v1 import featurestore_pb2 as fs

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
T0_MS = int(T0.timestamp() * 1000)
ALL = {"from_ms": 0, "until_ms": feature_sources.MAX_EVENT_MS}


def view(fmt: str = "parquet", entity_type: str = "STRING", created: str = "") -> fs.FeatureView:
    return fs.FeatureView(
        name="users",
        entity_key="user_id",
        entity_type=entity_type,
        features=[
            fs.Feature(name="score", datatype="FP32"),
            fs.Feature(name="counts", datatype="INT64", shape=[3] if fmt == "parquet" else []),
            fs.Feature(name="country", datatype="BYTES"),
        ],
        source=fs.FeatureSource(
            format=fmt, event_timestamp_column="ts", created_timestamp_column=created
        ),
    )


def at(*seconds: float) -> pa.Array:
    return pa.array([T0 + dt.timedelta(seconds=s) for s in seconds], pa.timestamp("us", tz="UTC"))


def table(keys: list[Any], seconds: list[float], **overrides: Any) -> pa.Table:
    n = len(keys)
    columns: dict[str, Any] = {
        "user_id": keys,
        "ts": at(*seconds),
        "score": pa.array(np.arange(n, dtype=np.float32)),
        "counts": pa.array([[i, i + 1, i + 2] for i in range(n)], pa.list_(pa.int32())),
        "country": [f"c{i}" for i in range(n)],
        "unused": ["x"] * n,
    }
    columns.update(overrides)
    return pa.table({k: v for k, v in columns.items() if v is not None})


def read(tmp_path: Path, tbl: pa.Table, v: fs.FeatureView | None = None, **kw: Any) -> Any:
    path = tmp_path / "src.parquet"
    pq.write_table(tbl, path, row_group_size=kw.pop("row_group_size", 2))
    return read_latest(SourceSpec.from_view(v or view()), path, **(ALL | kw))


def test_newest_row_per_entity_across_row_groups(tmp_path: Path) -> None:
    # "a" appears in three row groups; its newest event is in the middle one.
    rows = read(tmp_path, table(["a", "b", "a", "c", "a"], [1, 2, 9, 3, 5]), chunk_rows=2)
    keys, events, columns = rows.slice(0, len(rows))
    assert (rows.rows_read, rows.rows_in_window, keys) == (5, 5, ["a", "b", "c"])
    assert events == [T0_MS + 9000, T0_MS + 2000, T0_MS + 3000]
    np.testing.assert_array_equal(columns["score"], np.float32([2, 1, 3]))
    assert columns["score"].dtype == np.float32
    assert columns["counts"].dtype == np.int64 and columns["counts"].shape == (3, 3)
    np.testing.assert_array_equal(columns["counts"][0], [2, 3, 4])
    assert columns["country"].tolist() == [b"c2", b"c1", b"c3"]


def test_intermediate_merges_keep_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real knob, made small so that the merge path runs many times on a small file.
    monkeypatch.setattr(feature_sources, "_MERGE_MIN_ROWS", 3)
    keys = [f"k{i % 7}" for i in range(60)]
    rows = read(tmp_path, table(keys, list(range(60))), chunk_rows=4)
    got_keys, events, columns = rows.slice(0, len(rows))
    assert got_keys == sorted(set(keys))
    newest = {k: i for i, k in enumerate(keys)}
    assert events == [T0_MS + newest[k] * 1000 for k in got_keys]
    assert columns["score"].tolist() == [float(newest[k]) for k in got_keys]


def test_ties_break_on_created_then_file_order(tmp_path: Path) -> None:
    created = at(5, 1, 1)
    rows = read(
        tmp_path, table(["a", "a", "a"], [1, 1, 1], created=created), view(created="created")
    )
    assert rows.slice(0, 1)[2]["score"].tolist() == [0.0]  # the latest created wins
    rows = read(tmp_path, table(["a", "a"], [1, 1]))
    assert rows.slice(0, 1)[2]["score"].tolist() == [1.0]  # same times: the later row wins


def test_window_is_start_inclusive_end_exclusive(tmp_path: Path) -> None:
    rows = read(
        tmp_path,
        table(["a", "b", "c", "a"], [0, 1, 2, 3]),
        from_ms=T0_MS + 1000,
        until_ms=T0_MS + 3000,
    )
    assert (rows.rows_read, rows.rows_in_window) == (4, 2)
    assert rows.slice(0, len(rows))[0] == ["b", "c"]


def test_int64_keys_are_canonical_and_times_of_any_unit(tmp_path: Path) -> None:
    seconds = pa.array([T0_MS // 1000 + 1, T0_MS // 1000 + 2], pa.int64()).cast(pa.timestamp("s"))
    tbl = table([7, 2**40], [0, 0], ts=seconds, user_id=pa.array([7, 2**40], pa.uint64()))
    with pytest.raises(SourceError, match="entity key column 'user_id' has type uint64"):
        read(tmp_path, tbl, view())  # a STRING view refuses integer keys
    tbl = tbl.set_column(0, "user_id", pa.array([7, 2**40], pa.int64()))
    keys, events, _ = (rows := read(tmp_path, tbl, view(entity_type="INT64"))).slice(0, len(rows))
    assert keys == ["7", str(2**40)] and events == [T0_MS + 2000, T0_MS + 1000][::-1]


def test_fixed_size_and_dictionary_columns_are_accepted(tmp_path: Path) -> None:
    counts = pa.array([[1, 2, 3], [4, 5, 6]], pa.list_(pa.int64(), 3))
    country = pa.array(["de", "fr"]).dictionary_encode()
    rows = read(tmp_path, table(["a", "b"], [0, 1], counts=counts, country=country))
    columns = rows.slice(0, 2)[2]
    assert columns["counts"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert columns["country"].tolist() == [b"de", b"fr"]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"score": None, "country": None}, "missing column(s) 'score', 'country'"),
        ({"score": pa.array([1.0, 2.0], pa.float64())}, "column 'score' has type double"),
        ({"counts": pa.array([1, 2], pa.int64())}, "feature INT64 [3] needs"),
        ({"counts": pa.array([[1, 2], [3, 4]], pa.list_(pa.int64(), 2))}, "column 'counts'"),
        (
            {"counts": pa.array([[1.0, 2, 3]] * 2)},
            "column 'counts' has type list<element: double>;",
        ),
        ({"ts": pa.array([1, 2])}, "column 'ts' has type int64; expected a timestamp"),
        ({"user_id": pa.array([b"a", b"b"])}, "entity key column 'user_id' has type binary"),
    ],
)
def test_wrong_columns_are_refused_before_reading_rows(
    tmp_path: Path, overrides: dict[str, Any], needle: str
) -> None:
    with pytest.raises(SourceError, match="does not match view 'users'") as info:
        read(tmp_path, table(["a", "b"], [0, 1], **overrides))
    assert needle in str(info.value)
    assert str(tmp_path / "src.parquet") in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"user_id": ["a", None, "c"]}, "column 'user_id': row 2 has an empty value"),
        ({"user_id": ["a", "", "c"]}, "row 2 has a key of 0 bytes"),
        ({"user_id": ["a", "b", "x" * 1025]}, "row 3 has a key of 1025 bytes"),
        ({"score": pa.array([1, None, 2], pa.float32())}, "column 'score': row 2"),
        ({"counts": pa.array([[1, 2, 3], [1], [1, 2, 3]])}, "row 2 holds 1 values at depth 1"),
        ({"counts": pa.array([[1, 2, 3], [1, 2, 3], [1, None, 3]])}, "column 'counts': row 3"),
        ({"ts": pa.array([0, -5, 0], pa.timestamp("ms"))}, "row 2 is before 1970"),
    ],
)
def test_bad_values_are_refused_with_their_row(
    tmp_path: Path, overrides: dict[str, Any], needle: str
) -> None:
    with pytest.raises(SourceError) as info:
        read(tmp_path, table(["a", "b", "c"], [0, 1, 2], **overrides), row_group_size=10)
    assert needle in str(info.value)


def test_not_a_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    path.write_text("user_id,ts\n")
    with pytest.raises(SourceError, match="not a readable Parquet file"):
        read_latest(SourceSpec.from_view(view()), path, **ALL)
    with pytest.raises(SourceError, match="No such file"):
        read_latest(SourceSpec.from_view(view()), tmp_path / "missing.parquet", **ALL)


def test_csv_types_come_from_the_view(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text(
        "user_id,ts,score,counts,country,extra\n"
        "007,2024-01-01T00:00:01Z,1.5,3,de,x\n"
        "8,2024-01-01T00:00:02+01:00,2,4,123,y\n"
        "007,2024-01-01T00:00:03.250Z,3,5,fr,z\n"
    )
    rows = read_latest(SourceSpec.from_view(view("csv")), path, **ALL)
    keys, events, columns = rows.slice(0, len(rows))
    assert keys == ["007", "8"]  # a STRING key keeps its leading zeros
    assert events == [T0_MS + 3250, T0_MS + 2000 - 3_600_000]
    assert columns["country"].tolist() == [b"fr", b"123"]  # BYTES: "123" is not a number
    assert columns["counts"].dtype == np.int64


def test_csv_naive_times_are_utc(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text("user_id,ts,score,counts,country\na,2024-01-01 00:00:01,1,1,x\n")
    rows = read_latest(SourceSpec.from_view(view("csv")), path, **ALL)
    assert rows.slice(0, 1)[1] == [T0_MS + 1000]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("user_id,ts,score,counts\na,2024-01-01,1,1\n", "missing column(s) 'country'"),
        ("user_id,ts,score,counts,country\na,2024-01-01T00:00:00,x,1,c\n", "invalid value 'x'"),
        ("user_id,ts,score,counts,country\na,yesterday,1,1,c\n", "not ISO 8601 times"),
        ("user_id,ts,score,counts,country\n,2024-01-01T00:00:00,1,1,c\n", "key of 0 bytes"),
    ],
)
def test_bad_csv_is_refused(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "users.csv"
    path.write_text(text)
    with pytest.raises(SourceError) as info:
        read_latest(SourceSpec.from_view(view("csv")), path, **ALL)
    assert needle in str(info.value)


def test_csv_refuses_vector_features(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text("user_id,ts,score,counts,country\n")
    v = view("csv")
    v.features[1].shape[:] = [3]
    with pytest.raises(SourceError, match=r"scalar features only, not counts \[3\]"):
        read_latest(SourceSpec.from_view(v), path, **ALL)


def test_a_view_without_source_cannot_be_read() -> None:
    v = view()
    v.ClearField("source")
    with pytest.raises(SourceError, match="view 'users' has no source"):
        SourceSpec.from_view(v)


def test_view_json_with_plain_defaults() -> None:
    parsed = parse_view_json(
        """{"name": "users", "entityKey": "user_id", "entity_type": "INT64",
            "ttl_seconds": 60,
            "features": [
              {"name": "score", "datatype": "FP32", "default": 1.5},
              {"name": "counts", "datatype": "INT64", "shape": [2], "default": [1, 2]},
              {"name": "tags", "datatype": "BYTES", "shape": [2], "default": ["a", "é"]},
              {"name": "flag", "datatype": "BOOL", "default": true}
            ],
            "source": {"format": "csv", "path": "u.csv", "event_timestamp_column": "ts"}}"""
    )
    assert parsed.entity_key == "user_id" and parsed.source.format == "csv"
    raws = [f.default_raw for f in parsed.features]
    assert raws[0] == struct.pack("<f", 1.5)
    assert raws[1] == struct.pack("<2q", 1, 2)
    assert raws[2] == b"\x01\x00\x00\x00a\x02\x00\x00\x00\xc3\xa9"
    assert raws[3] == b"\x01"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[1]", "expected one JSON object"),
        ("{", "not valid JSON"),
        ('{"name": "v", "colour": 1}', "colour"),
        ('{"features": [{"name": "f", "datatype": "INT32", "default": 1.5}]}', "not exactly"),
        ('{"features": [{"name": "f", "datatype": "INT32", "default": [1]}]}', "shape []"),
        ('{"features": [{"name": "f", "datatype": "FP32", "default": "x"}]}', "'f' default"),
    ],
)
def test_bad_view_json_is_refused(text: str, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_view_json(text)
    assert needle in str(info.value)
