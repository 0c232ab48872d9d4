"""A run killed with SIGKILL mid-way and re-run with the same run id gives output identical to
a clean run: no duplicates, no gaps, one _SUCCESS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import onnx
import pyarrow.parquet as pq
from batchsupport import CLI, TWO_IN, Registry, batch_cli, read_output, two_input_table, write_parts

ROWS = 100_000


def _args(registry: Registry, cache: Path, source: Path, out: Path, run_id: str) -> list[str]:
    return [
        "run",
        TWO_IN,
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
        "--run-id",
        run_id,
        "--part-rows",
        "250",
        "--batch-rows",
        "100",
        "--workers",
        "2",
        "--json",
        "--no-progress",
    ]


def _committed(staging: Path) -> int:
    return len(list(staging.glob("part-*.parquet"))) if staging.exists() else 0


def test_sigkill_then_rerun_equals_clean_run(
    registry: Registry, two_in: onnx.ModelProto, tmp_path: Path, cache_dir: Path
) -> None:
    write_parts(two_input_table(ROWS), tmp_path / "in", files=4, row_group_rows=250)
    out = tmp_path / "out"
    staging = tmp_path / ".out.staging-crash"
    proc = subprocess.Popen(
        [str(CLI), "batch", *_args(registry, cache_dir, tmp_path / "in", out, "crash")],
        start_new_session=True,  # its pool processes share the group: kill them all
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while _committed(staging) < 5 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    killed_at = _committed(staging)
    assert not out.exists(), "the run finished before it could be killed: make it longer"
    assert 5 <= killed_at < ROWS // 250

    again = batch_cli(*_args(registry, cache_dir, tmp_path / "in", out, "crash"))
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["parts_skipped"] >= killed_at and summary["rows"] == ROWS
    assert summary["rows_scored"] < ROWS  # only the unfinished parts were redone
    clean = batch_cli(*_args(registry, cache_dir, tmp_path / "in", tmp_path / "clean", "crash"))
    assert clean.returncode == 0, clean.stderr

    got, want = read_output(out), read_output(tmp_path / "clean")
    assert got.column("id").to_pylist() == list(range(ROWS))  # no duplicates, no gaps
    assert got.drop_columns(["scored_at"]).equals(want.drop_columns(["scored_at"]))
    assert not staging.exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("part-")) == [
        "_SUCCESS",
        "_common_metadata",
        "_manifest.json",
    ]
    assert len(list(out.glob("part-*.parquet"))) == ROWS // 250
    assert pq.read_metadata(out / "_common_metadata").num_columns == got.num_columns
