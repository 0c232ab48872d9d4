"""The local engine end to end against a real registry: predictions equal ONNX Runtime run
by hand on the same rows, the output's shape and metadata, the inputs it reads."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from batchsupport import (
    TWO_IN,
    Registry,
    batch_cli,
    by_hand,
    push,
    read_output,
    staging_dirs,
    two_input_table,
    write_parts,
)

from modelserve.cli.batch.job import RunOptions, run_batch
from modelserve.tensors import TensorSpec


def test_local_engine_equals_onnx_runtime_by_hand(
    registry: Registry, two_in: onnx.ModelProto, tmp_path: Path, cache_dir: Path
) -> None:
    table = two_input_table(5000)
    write_parts(table, tmp_path / "in", files=3, row_group_rows=700)
    out = tmp_path / "out"
    result = batch_cli(
        "run",
        TWO_IN,
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(out),
        "--key-column",
        "id",
        "--registry",
        registry.address,
        "--cache-dir",
        str(cache_dir),
        "--batch-rows",
        "512",
        "--part-rows",
        "1000",
        "--workers",
        "2",
        "--run-id",
        "r1",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"] == 5000 and summary["parts"] > 2 and summary["version"] == 1
    got = read_output(out)
    want = by_hand(two_in, table)
    assert got.column("id").to_pylist() == list(range(5000))
    np.testing.assert_allclose(got.column("score").to_numpy(), want["score"], rtol=1e-6, atol=1e-6)
    vec = np.asarray(got.column("vec").combine_chunks().flatten()).reshape(-1, 4)
    np.testing.assert_allclose(vec, want["vec"], rtol=1e-6, atol=1e-5)
    assert pa.types.is_fixed_size_list(got.schema.field("vec").type)
    assert set(got.column("run_id").to_pylist()) == {"r1"}
    assert set(got.column("model_name").to_pylist()) == {TWO_IN}
    meta = pq.read_schema(out / "_common_metadata").metadata
    assert meta[b"modelserve.run_id"] == b"r1" and meta[b"modelserve.version"] == b"1"
    assert meta[b"modelserve.sha256"].decode() == summary["sha256"]
    assert (out / "_SUCCESS").exists() and not list(staging_dirs(out))
    # Statistics (for readers' pruning) on keys, outputs and scalar metadata, not on the
    # dictionary-typed metadata (one value per part; computing them decodes every row).
    chunk = pq.ParquetFile(next(out.glob("part-*.parquet"))).metadata.row_group(0)
    stats = {chunk.column(i).path_in_schema: chunk.column(i).is_stats_set for i in range(8)}
    assert stats["id"] and stats["score"] and stats["model_version"] and stats["scored_at"]
    assert not any(stats[c] for c in ("model_name", "model_sha256", "run_id")), stats


def test_same_run_id_again_is_already_complete(
    registry: Registry, two_in: onnx.ModelProto, tmp_path: Path, cache_dir: Path
) -> None:
    pq.write_table(two_input_table(100), tmp_path / "in.parquet")
    opts = RunOptions(
        model=f"{TWO_IN}@production",
        input=str(tmp_path / "in.parquet"),
        output=str(tmp_path / "out"),
        key_columns=["id"],
        registry=registry.address,
        cache_dir=str(cache_dir),
        run_id="again",
        workers=1,
        progress=False,
    )
    first = run_batch(opts)
    second = run_batch(opts)
    assert first["rows"] == 100 and second["already_complete"] is True
    assert read_output(tmp_path / "out").num_rows == 100


def test_csv_glob_and_partitioned_inputs(
    registry: Registry, two_in: onnx.ModelProto, tmp_path: Path, cache_dir: Path
) -> None:
    table = two_input_table(300)
    flat = table.drop_columns(["a"]).append_column(
        "a_0", table.column("a").combine_chunks().flatten().take(np.arange(0, 900, 3))
    )
    flat = flat.append_column(
        "a_1", table.column("a").combine_chunks().flatten().take(np.arange(1, 900, 3))
    )
    flat = flat.append_column(
        "a_2", table.column("a").combine_chunks().flatten().take(np.arange(2, 900, 3))
    )
    (tmp_path / "csv").mkdir()
    pacsv.write_csv(flat.slice(0, 150), tmp_path / "csv" / "x1.csv")
    pacsv.write_csv(flat.slice(150), tmp_path / "csv" / "x2.csv")
    part = table.append_column("day", pa.array(["d1"] * 150 + ["d2"] * 150))
    pq.write_to_dataset(part, tmp_path / "hive", partition_cols=["day"])
    want = by_hand(two_in, table)
    for name, source, keys in (
        ("csv", str(tmp_path / "csv" / "*.csv"), ["id"]),
        ("hive", str(tmp_path / "hive"), ["id", "day"]),
    ):
        out = tmp_path / f"out-{name}"
        summary = run_batch(
            RunOptions(
                model=f"{TWO_IN}:1",
                input=source,
                output=str(out),
                key_columns=keys,
                registry=registry.address,
                cache_dir=str(cache_dir),
                workers=1,
                progress=False,
            )
        )
        assert summary["rows"] == 300, name
        got = read_output(out)
        np.testing.assert_allclose(got.column("score").to_numpy(), want["score"], rtol=1e-5)
    hive = read_output(tmp_path / "out-hive")
    assert hive.column("day").to_pylist() == ["d1"] * 150 + ["d2"] * 150


def test_onnx_runtime_runs_batch_rows_while_parts_are_read_in_larger_batches(
    registry: Registry, two_in: onnx.ModelProto, tmp_path: Path, cache_dir: Path
) -> None:
    """--batch-rows sizes the model's runs; reads are sized apart (bigger), and every read
    batch is split into runs of at most --batch-rows rows, the rows' order kept."""
    from modelserve.cli.batch import parts

    table = two_input_table(1000, seed=5)
    pq.write_table(table, tmp_path / "in.parquet")
    parts._SCORERS.clear()  # sessions are kept across runs: count this run's alone
    summary = run_batch(
        RunOptions(
            model=TWO_IN,
            input=str(tmp_path / "in.parquet"),
            output=str(tmp_path / "out"),
            key_columns=["id"],
            registry=registry.address,
            cache_dir=str(cache_dir),
            batch_rows=96,
            workers=1,
            progress=False,
        )
    )
    (scorer,) = [s for key, s in parts._SCORERS.items() if key[0] == summary["sha256"]]
    runs = scorer._session.runs_by_instance()[0]
    # One read batch of 1,000 rows (a part's reads hold up to READ_BYTES of input), run as
    # ten runs of 96 rows and one of 40.
    assert runs == {96: 10, 40: 1}, runs
    got = read_output(tmp_path / "out")
    want = by_hand(two_in, table)
    np.testing.assert_allclose(got.column("score").to_numpy(), want["score"], rtol=1e-6, atol=1e-6)


def test_a_text_model_scores_on_processes(
    registry: Registry, tmp_path: Path, cache_dir: Path
) -> None:
    """BYTES values are converted in Python, under the GIL: such a model is scored by the
    driver plus spawned processes rather than by threads; the result is the same."""
    from onnx import TensorProto, helper

    from modelserve.cli.batch import local_engine

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "text_echo",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "text.onnx")
    asyncio.run(push(registry.address, "batch_text", tmp_path / "text.onnx"))
    words = [f"word-{i}" for i in range(3000)]
    table = pa.table({"id": pa.array(np.arange(3000, dtype=np.int64)), "text": words})
    write_parts(table, tmp_path / "in", files=3, row_group_rows=250)
    result = batch_cli(
        "run", "batch_text", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
        "--key-column", "id", "--registry", registry.address, "--cache-dir", str(cache_dir),
        "--part-rows", "500", "--workers", "2", "--json", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = read_output(tmp_path / "out")
    assert [v.decode() for v in got.column("echo").to_pylist()] == words
    assert local_engine.holds_the_gil([TensorSpec("text", "BYTES", (-1,))])
    assert not local_engine.holds_the_gil([TensorSpec("x", "FP32", (-1, 3))])


def test_scalar_columns_feed_a_vector_input_run_by_run(
    registry: Registry, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F scalar columns feeding a [-1, F] input are assembled one run at a time into a buffer
    reused from run to run and from record batch to record batch: an Identity model gives
    back every row, in order, across short last runs and several read batches per part."""
    from onnx import TensorProto, helper

    from modelserve.cli.batch import parts

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "vec_echo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "echo.onnx")
    asyncio.run(push(registry.address, "batch_vec_echo", tmp_path / "echo.onnx"))
    rows = 2500
    x = np.random.default_rng(3).standard_normal((rows, 4)).astype(np.float32)
    columns = {f"f{j}": pa.array(x[:, j]) for j in range(4)}  # the default: numeric columns
    table = pa.table({"id": pa.array(np.arange(rows, dtype=np.int64)), **columns})
    write_parts(table, tmp_path / "in", files=2, row_group_rows=300)
    # Read batches of 1,200 rows (16 bytes a row): runs of 100 and a short last one per batch.
    monkeypatch.setattr(parts, "READ_BYTES", 1200 * 16)
    summary = run_batch(
        RunOptions(
            model="batch_vec_echo",
            input=str(tmp_path / "in"),
            output=str(tmp_path / "out"),
            key_columns=["id"],
            registry=registry.address,
            cache_dir=str(cache_dir),
            batch_rows=100,
            part_rows=1250,
            workers=2,
            progress=False,
        )
    )
    assert summary["rows"] == rows
    got = read_output(tmp_path / "out")
    y = np.asarray(got.column("y").combine_chunks().flatten()).reshape(-1, 4)
    np.testing.assert_array_equal(y, x)


def test_batch_feeds_reuse_one_run_buffer() -> None:
    """Runs of one record batch, and of the next, are views of one buffer; each holds its
    own rows."""
    from modelserve.cli.batch.columns import plan_columns

    plan = plan_columns(
        pa.schema([("k", pa.int64()), ("a", pa.float32()), ("b", pa.float32())]),
        [TensorSpec("x", "FP32", (-1, 2))],
        [TensorSpec("y", "FP32", (-1, 2))],
        keys=["k"],
    )

    def batch(start: int) -> pa.RecordBatch:
        values = np.arange(start, start + 10, dtype=np.float32)
        return pa.record_batch(
            [pa.array(np.arange(10)), pa.array(values), pa.array(-values)], names=["k", "a", "b"]
        )

    first = plan.batch_feeds(batch(0), "here")
    run1 = first.rows(0, 4)["x"]
    np.testing.assert_array_equal(run1, [[0, 0], [1, -1], [2, -2], [3, -3]])
    run2 = first.rows(8, 10)["x"]
    np.testing.assert_array_equal(run2, [[8, -8], [9, -9]])
    second = plan.batch_feeds(batch(100), "here").reuse(first)
    run3 = second.rows(0, 4)["x"]
    np.testing.assert_array_equal(run3[:, 0], [100, 101, 102, 103])
    assert np.shares_memory(run1, run2) and np.shares_memory(run2, run3)
    # The whole batch at once (ColumnPlan.feeds) is the same rows.
    np.testing.assert_array_equal(plan.feeds(batch(0), "here")["x"][:, 1], -np.arange(10))


def _commit_test_run(registry: Registry, tmp_path: Path, cache_dir: Path) -> RunOptions:
    write_parts(two_input_table(900), tmp_path / "in", files=3, row_group_rows=300)
    return RunOptions(
        model=TWO_IN,
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        key_columns=["id"],
        registry=registry.address,
        cache_dir=str(cache_dir),
        workers=1,
        progress=False,
    )


def test_a_part_is_committed_beside_the_scoring_of_the_next(
    registry: Registry,
    two_in: onnx.ModelProto,
    tmp_path: Path,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One executor, three parts: the first part's commit (fsync, rename) is still waiting
    when the executor has staged the second part; every part is committed by the end."""
    import threading

    from modelserve.cli.batch import commit, local_engine

    staged: list[int] = []
    second = threading.Event()
    overlapped: list[bool] = []
    stage, real_commit = local_engine.stage_scored_part, commit.StagedPart.commit

    def stage_and_note(*args: object, **kwargs: object) -> commit.StagedPart:
        result = stage(*args, **kwargs)  # type: ignore[arg-type]
        staged.append(result.rows)
        if len(staged) == 2:
            second.set()
        return result

    def slow_commit(self: commit.StagedPart) -> int:
        if not overlapped:
            overlapped.append(second.wait(10))
        return real_commit(self)

    monkeypatch.setattr(local_engine, "stage_scored_part", stage_and_note)
    monkeypatch.setattr(commit.StagedPart, "commit", slow_commit)
    summary = run_batch(_commit_test_run(registry, tmp_path, cache_dir))
    assert overlapped == [True]
    assert summary["rows"] == 900 and summary["parts"] == 3
    assert read_output(tmp_path / "out").column("id").to_pylist() == list(range(900))


def test_a_failed_commit_fails_the_run(
    registry: Registry,
    two_in: onnx.ModelProto,
    tmp_path: Path,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modelserve.cli.batch import commit

    def failing(self: commit.StagedPart) -> int:
        self.tmp.unlink()
        raise OSError(5, "disk gone")

    monkeypatch.setattr(commit.StagedPart, "commit", failing)
    with pytest.raises(OSError, match="disk gone"):
        run_batch(_commit_test_run(registry, tmp_path, cache_dir))
    assert not (tmp_path / "out").exists()
    (staging,) = staging_dirs(tmp_path / "out")  # kept for a re-run, no part committed
    assert not list(staging.glob("part-*")) and not list(staging.glob(".*.tmp"))
