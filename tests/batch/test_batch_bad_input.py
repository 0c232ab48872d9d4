"""Bad input: every case exits non-zero with a message naming the problem, and leaves no
output, no staging dir and nothing published."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from batchsupport import TWO_IN, Registry, batch_cli, staging_dirs, two_input_table, write_parts

from modelserve.proto.modelserve.v1 import registry_pb2, registry_pb2_grpc

PUBLISH = "batch_bad_lookup"


def _with(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, column)


def _nan_at(table: pa.Table, row: int) -> pa.Table:
    b0 = table.column("b_0").to_numpy().copy()
    b0[row] = np.nan
    return _with(table, "b_0", pa.array(b0))


def _nans_in_list(table: pa.Table, *rows: int) -> pa.Table:
    a = np.asarray(table.column("a").combine_chunks().flatten()).copy()
    for row in rows:
        a[row * 3 + 1] = np.nan
    return _with(table, "a", pa.FixedSizeListArray.from_arrays(pa.array(a), 3))


CASES = {
    "missing column": (lambda t: t.drop_columns(["b_1"]), "no column for input 'b'"),
    "wrong dtype": (
        lambda t: _with(t, "b_0", pa.array([str(v) for v in t.column("b_0").to_pylist()])),
        "column 'b_0' is string",
    ),
    "wrong width": (
        lambda t: _with(
            t, "a", pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(t.num_rows * 4, "f4")), 4)
        ),
        "holds 4 values per row, expected 3",
    ),
    # The NaN sits in the last part: earlier parts were scored (and staged) before it is met.
    "NaN": (lambda t: _nan_at(t, t.num_rows - 5), "column 'b_0' has 1 NaN value(s)"),
    "NaN in a list column": (
        lambda t: _nans_in_list(t, t.num_rows - 9, t.num_rows - 2),
        "column 'a' has 2 NaN value(s)",
    ),
    "null": (
        lambda t: _with(t, "b_1", pa.array([None, *t.column("b_1").to_pylist()[1:]], pa.float32())),
        "column 'b_1' has 1 null value(s)",
    ),
    "empty input": (lambda t: t.slice(0, 0), "input is empty"),
}


def _run(registry: Registry, cache: Path, source: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return batch_cli(
        "run",
        *extra or (TWO_IN,),
        "--input",
        str(source),
        "--output",
        str(out),
        "--key-column",
        "id",
        "--registry",
        registry.address,
        "--cache-dir",
        str(cache),
        "--part-rows",
        "500",
        "--workers",
        "1",
        "--publish-lookup",
        PUBLISH,
        "--featurestore",
        "127.0.0.1:1",
    )


def _assert_nothing(registry: Registry, out: Path) -> None:
    assert not out.exists()
    assert not list(staging_dirs(out))

    async def get() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(registry.address) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            try:
                await stub.GetModel(registry_pb2.GetModelRequest(name=PUBLISH), timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    assert asyncio.run(get()) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_and_writes_nothing(
    case: str, registry: Registry, two_in: onnx.ModelProto, tmp_path: Path, cache_dir: Path
) -> None:
    change, message = CASES[case]
    write_parts(change(two_input_table(3000)), tmp_path / "in", files=2, row_group_rows=250)
    result = _run(registry, cache_dir, tmp_path / "in", tmp_path / "out")
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr, result.stderr
    _assert_nothing(registry, tmp_path / "out")


def test_nan_policy_pass_scores_nan_rows(
    registry: Registry, two_in: onnx.ModelProto, tmp_path: Path, cache_dir: Path
) -> None:
    pq.write_table(_nan_at(two_input_table(50), 3), tmp_path / "in.parquet")
    result = batch_cli(
        "run",
        TWO_IN,
        "--input",
        str(tmp_path / "in.parquet"),
        "--output",
        str(tmp_path / "out"),
        "--key-column",
        "id",
        "--registry",
        registry.address,
        "--cache-dir",
        str(cache_dir),
        "--nan-policy",
        "pass",
    )
    assert result.returncode == 0, result.stderr
    scores = pq.read_table(tmp_path / "out").sort_by("id").column("score").to_numpy()
    assert np.isnan(scores[3]) and not np.isnan(np.delete(scores, 3)).any()


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("batch_no_such_model", "unknown model"),
        (f"{TWO_IN}@no_such_label", "has no label 'no_such_label'"),
        (f"{TWO_IN}:9", "has no version 9"),
    ],
)
def test_unknown_model_label_or_version(
    ref: str,
    message: str,
    registry: Registry,
    two_in: onnx.ModelProto,
    tmp_path: Path,
    cache_dir: Path,
) -> None:
    pq.write_table(two_input_table(10), tmp_path / "in.parquet")
    result = _run(registry, cache_dir, tmp_path / "in.parquet", tmp_path / "out", ref)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    _assert_nothing(registry, tmp_path / "out")


def test_unreadable_file(
    registry: Registry, two_in: onnx.ModelProto, tmp_path: Path, cache_dir: Path
) -> None:
    (tmp_path / "in").mkdir()
    pq.write_table(two_input_table(10), tmp_path / "in" / "good.parquet")
    (tmp_path / "in" / "bad.parquet").write_bytes(b"not parquet at all" * 10)
    result = _run(registry, cache_dir, tmp_path / "in", tmp_path / "out")
    assert result.returncode == 2 and "cannot read input" in result.stderr, result.stderr
    assert "bad.parquet" in result.stderr
    _assert_nothing(registry, tmp_path / "out")
    result = _run(registry, cache_dir, tmp_path / "missing", tmp_path / "out")
    assert result.returncode == 2 and "does not exist" in result.stderr
