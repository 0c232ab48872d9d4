"""``modelserve features`` against a real featurestore process: apply a view from JSON,
materialise a Parquet file (incrementally), look features up, and the errors a person sees."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelserve.cli.suite import wait_serving

CLI = Path(sys.executable).parent / "modelserve"
T0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def featurestore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A featurestore process on a free port (SQLite online store); yields its address."""
    data = tmp_path_factory.mktemp("featurestore")
    port_file = data / "port.json"
    command = [sys.executable, "-m", "featurestore", "--port", "0", "--port-file", str(port_file)]
    command += ["--data-dir", str(data / "state")]
    with (data / "featurestore.log").open("ab") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None, (data / "featurestore.log").read_text()
            assert time.monotonic() < deadline, "featurestore did not start"
            time.sleep(0.05)
        address = f"127.0.0.1:{json.loads(port_file.read_text())['port']}"
        asyncio.run(wait_serving(address, timeout=60))
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (data / "featurestore.log").read_text()


def features(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    # The address comes from the environment here, as a deployment would set it.
    env = {**os.environ, "MODELSERVE_FEATURESTORE_ADDR": address}
    return subprocess.run(
        [str(CLI), "features", *args], capture_output=True, text=True, timeout=60, env=env
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def write_rows(path: Path, rows: list[tuple[str, int, float, list[int]]]) -> None:
    """rows: (user, seconds after T0, score, clicks[2])."""
    pq.write_table(
        pa.table(
            {
                "user": [r[0] for r in rows],
                "ts": [T0 + dt.timedelta(seconds=r[1]) for r in rows],
                "score": pa.array([r[2] for r in rows], pa.float64()),
                "clicks": pa.array([r[3] for r in rows], pa.list_(pa.int32(), 2)),
                "plan": [f"plan-{r[0]}" for r in rows],
            }
        ),
        path,
        row_group_size=2,
    )


def at(seconds: int) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat()


def test_apply_materialize_get_through_the_cli(featurestore: str, tmp_path: Path) -> None:
    source = tmp_path / "users.parquet"
    view = {
        "name": "cli_users",
        "entity_key": "user",
        "entity_type": "STRING",
        "features": [
            {"name": "score", "datatype": "FP64", "default": -1.0},
            {"name": "clicks", "datatype": "INT64", "shape": [2]},
            {"name": "plan", "datatype": "BYTES", "default": "free"},
        ],
        "source": {"format": "parquet", "path": str(source), "event_timestamp_column": "ts"},
    }
    (tmp_path / "view.json").write_text(json.dumps(view))
    assert "applied cli_users" in ok(features(featurestore, "apply", str(tmp_path / "view.json")))
    listing = ok(features(featurestore, "list"))
    assert "cli_users  entity: user STRING" in listing
    assert "clicks:INT64[2]" in listing and "materialized up to: never" in listing

    write_rows(
        source, [("ann", 10, 0.5, [1, 2]), ("bob", 20, 0.25, [3, 4]), ("ann", 30, 0.75, [5, 6])]
    )
    report = json.loads(
        ok(features(featurestore, "materialize", "cli_users", "--end", at(100), "--json"))
    )
    assert (report["rows_read"], report["entities"], report["written"]) == (3, 2, 2)
    assert report["watermark_after"] == "2024-05-01T00:01:40.000+00:00"

    table = json.loads(ok(features(featurestore, "get", "cli_users", "ann", "bob", "zed")))
    assert table["rows"] == [
        {
            "user": "ann",
            "status": {"score": "PRESENT", "clicks": "PRESENT", "plan": "PRESENT"},
            "values": {"score": 0.75, "clicks": [5, 6], "plan": "plan-ann"},
        },
        {
            "user": "bob",
            "status": {"score": "PRESENT", "clicks": "PRESENT", "plan": "PRESENT"},
            "values": {"score": 0.25, "clicks": [3, 4], "plan": "plan-bob"},
        },
        {
            "user": "zed",
            "status": {"score": "MISSING", "clicks": "MISSING", "plan": "MISSING"},
            "values": {"score": -1.0, "clicks": [0, 0], "plan": "free"},
        },
    ]

    # A file with a missing column is refused before anything is written.
    bad = tmp_path / "bad.parquet"
    pq.write_table(pq.read_table(source).drop_columns(["plan"]), bad)
    refused = features(featurestore, "materialize", "cli_users", "--source", str(bad))
    assert refused.returncode == 2, refused.stderr
    assert "missing column(s) 'plan'" in refused.stderr
    assert "2024-05-01T00:01:40.000+00:00" in ok(features(featurestore, "list"))

    # The second run only sends rows newer than the watermark.
    write_rows(
        source,
        [("ann", 30, 0.75, [5, 6]), ("bob", 20, 0.25, [3, 4]), ("cat", 150, 0.125, [7, 8])],
    )
    line = ok(features(featurestore, "materialize", "cli_users", "--end", at(200)))
    assert "3 rows read, 1 in the window, 1 entities sent, 1 stored" in line
    got = json.loads(ok(features(featurestore, "get", "cli_users", "cat", "--feature", "score")))
    assert got["rows"] == [
        {"user": "cat", "status": {"score": "PRESENT"}, "values": {"score": 0.125}}
    ]


def test_cli_errors_name_the_problem(featurestore: str, tmp_path: Path) -> None:
    unknown = features(featurestore, "get", "ghost_view", "a")
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stderr and "ghost_view" in unknown.stderr

    view = {
        "name": "cli_accounts",
        "entity_key": "account",
        "entity_type": "INT64",
        "features": [{"name": "balance", "datatype": "FP32"}],
    }
    (tmp_path / "accounts.json").write_text(json.dumps(view))
    ok(features(featurestore, "apply", str(tmp_path / "accounts.json")))
    wrong_key = features(featurestore, "get", "cli_accounts", "12", "not-a-number")
    assert wrong_key.returncode == 1
    assert "INVALID_ARGUMENT" in wrong_key.stderr and "not-a-number" in wrong_key.stderr

    unknown_feature = features(featurestore, "get", "cli_accounts", "12", "--feature", "age")
    assert unknown_feature.returncode == 1 and "NOT_FOUND" in unknown_feature.stderr

    no_source = features(featurestore, "materialize", "cli_accounts", "--source", "x.parquet")
    assert no_source.returncode == 2 and "has no source" in no_source.stderr

    (tmp_path / "broken.json").write_text('{"name": "x", "colour": "red"}')
    broken = features(featurestore, "apply", str(tmp_path / "broken.json"))
    assert broken.returncode == 2 and "colour" in broken.stderr
