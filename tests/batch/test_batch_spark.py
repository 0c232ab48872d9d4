"""The Spark engine (local[2], one SparkSession for all Spark tests): predictions equal ONNX
Runtime run by hand and are identical to the local engine's; bad data fails the run with the
executor's message and leaves nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from batchsupport import (
    TWO_IN,
    Registry,
    by_hand,
    read_output,
    staging_dirs,
    two_input_table,
    write_parts,
)

from modelserve.cli.batch.columns import BatchInputError
from modelserve.cli.batch.job import RunOptions, run_batch

pytestmark = pytest.mark.spark


def _options(registry: Registry, cache: Path, source: Path, out: Path, engine: str) -> RunOptions:
    return RunOptions(
        model=TWO_IN,
        input=str(source),
        output=str(out),
        engine=engine,
        master="local[2]",
        key_columns=["id"],
        registry=registry.address,
        cache_dir=str(cache),
        part_rows=1000,
        batch_rows=300,
        run_id="same",
        workers=2,
        progress=False,
    )


def test_spark_equals_onnx_runtime_and_local_engine(
    spark: Any, registry: Registry, two_in: onnx.ModelProto, tmp_path: Path, cache_dir: Path
) -> None:
    table = two_input_table(4000, seed=3)
    write_parts(table, tmp_path / "in", files=2, row_group_rows=500)
    s = run_batch(_options(registry, cache_dir, tmp_path / "in", tmp_path / "spark", "spark"))
    loc = run_batch(_options(registry, cache_dir, tmp_path / "in", tmp_path / "local", "local"))
    assert s["engine"] == "spark" and s["rows"] == loc["rows"] == 4000 and s["parts"] == 4
    got, other = read_output(tmp_path / "spark"), read_output(tmp_path / "local")
    want = by_hand(two_in, table)
    np.testing.assert_allclose(got.column("score").to_numpy(), want["score"], rtol=1e-6, atol=1e-6)
    vec = np.asarray(got.column("vec").combine_chunks().flatten()).reshape(-1, 4)
    np.testing.assert_allclose(vec, want["vec"], rtol=1e-6, atol=1e-5)
    assert got.drop_columns(["scored_at"]).equals(other.drop_columns(["scored_at"]))


def test_spark_bad_data_fails_with_the_executor_message(
    spark: Any, registry: Registry, two_in: onnx.ModelProto, tmp_path: Path, cache_dir: Path
) -> None:
    table = two_input_table(2000, seed=4)
    b0 = table.column("b_0").to_numpy().copy()
    b0[1500] = np.nan
    import pyarrow as pa

    table = table.set_column(table.schema.get_field_index("b_0"), "b_0", pa.array(b0))
    write_parts(table, tmp_path / "in", files=2, row_group_rows=500)
    out = tmp_path / "out"
    with pytest.raises(BatchInputError, match="column 'b_0' has 1 NaN value"):
        run_batch(_options(registry, cache_dir, tmp_path / "in", out, "spark"))
    assert not out.exists() and not list(staging_dirs(out))
