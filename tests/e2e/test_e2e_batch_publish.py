"""``modelserve batch run --publish-lookup`` through the real suite: the gateway (tritonclient)
answers each key with the batch's values and ``lookup_status``; a second run switches
atomically (a reader polling during the switch only ever sees one generation per answer);
``modelserve batch rollback`` restores the first."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
from batchsupport import batch_cli, push, read_output, two_input_model, two_input_table
from testsupport import eventually

from modelserve.cli.suite import Suite
from modelserve.proto.modelserve.v1 import featurestore_pb2, featurestore_pb2_grpc

MODEL = "batch_pub_model"
LOOKUP = "batch_scores"
ROWS = 20_000  # several feature-store writes per generation: a non-atomic switch would show
PROBE = np.array([0, 4100, 8200, 12300, 16400, ROWS - 1], dtype=np.int64)
UNKNOWN = ROWS + 7
READER = Path(__file__).parent / "clients" / "batch_lookup_reader.py"


def _run(suite: Suite, source: Path, out: Path, run_id: str) -> dict:  # type: ignore[type-arg]
    result = batch_cli(
        "run",
        MODEL,
        "--input",
        str(source),
        "--output",
        str(out),
        "--key-column",
        "id",
        "--run-id",
        run_id,
        "--publish-lookup",
        LOOKUP,
        "--registry",
        suite.address("registry"),
        "--featurestore",
        suite.address("featurestore"),
        "--cache-dir",
        str(out.parent / "cache"),
        "--json",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    summary: dict = json.loads(result.stdout)  # type: ignore[type-arg]
    return summary


def _ask(suite: Suite, keys: np.ndarray) -> dict[str, np.ndarray]:
    done = subprocess.run(
        [sys.executable, str(READER), suite.address("gateway"), LOOKUP, json.dumps(keys.tolist())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return {k: np.asarray(v) for k, v in json.loads(done.stdout).items()}


def _parse(line: str) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in json.loads(line).items()}


def _expected(out: Path) -> dict[int, tuple[float, list[float]]]:
    table = read_output(out)
    vec = np.asarray(table.column("vec").combine_chunks().flatten()).reshape(-1, 4)
    return {
        int(k): (float(s), v.tolist())
        for k, s, v in zip(
            table.column("id").to_pylist(), table.column("score").to_numpy(), vec, strict=True
        )
    }


def _generation(
    answer: dict[str, np.ndarray], gens: list[dict[int, tuple[float, list[float]]]]
) -> int:
    """Which generation every probed key of one answer came from; -1 if they disagree."""
    seen = set()
    for i, key in enumerate(PROBE):
        got = (float(answer["score"][i, 0]), answer["vec"][i].tolist())
        seen.add(next((g for g, gen in enumerate(gens) if gen[int(key)] == got), -2))
    return seen.pop() if len(seen) == 1 else -1


async def test_publish_switch_and_rollback(suite: Suite, tmp_path: Path) -> None:
    onnx.save(two_input_model(seed=11), tmp_path / "m.onnx")
    await push(suite.address("registry"), MODEL, tmp_path / "m.onnx")
    pq.write_table(two_input_table(ROWS, seed=21), tmp_path / "g1.parquet", row_group_size=5000)
    pq.write_table(two_input_table(ROWS, seed=22), tmp_path / "g2.parquet", row_group_size=5000)
    first = await asyncio.to_thread(_run, suite, tmp_path / "g1.parquet", tmp_path / "o1", "g1")
    assert first["published"]["keys"] == ROWS and first["published"]["view"] == f"{LOOKUP}.g1"
    gens = [_expected(tmp_path / "o1")]

    async def serves_first() -> None:
        answer = await asyncio.to_thread(_ask, suite, np.append(PROBE, UNKNOWN))
        for i, key in enumerate(PROBE):
            assert float(answer["score"][i, 0]) == gens[0][int(key)][0]
            assert answer["vec"][i].tolist() == gens[0][int(key)][1]
        assert answer["lookup_status"].reshape(-1).tolist() == [1] * len(PROBE) + [2]

    await eventually(serves_first, timeout=30)

    # A reader polls through the whole second run; its answers are judged afterwards.
    stop = tmp_path / "stop"
    reader = subprocess.Popen(  # noqa: ASYNC220 (a long-lived child, waited for in a thread)
        [
            sys.executable,
            str(READER),
            suite.address("gateway"),
            LOOKUP,
            json.dumps(PROBE.tolist()),
            str(stop),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    pump = threading.Thread(target=lambda: lines.extend(reader.stdout or ()), daemon=True)
    pump.start()
    try:
        second = await asyncio.to_thread(
            _run, suite, tmp_path / "g2.parquet", tmp_path / "o2", "g2"
        )
        gens.append(_expected(tmp_path / "o2"))

        async def reader_sees_second() -> None:
            # Its connection may sit on a replica that learns of the switch a moment later.
            assert any(_generation(_parse(line), gens) == 1 for line in list(lines)[-3:])

        await eventually(reader_sees_second, timeout=30)
    finally:
        stop.touch()
        await asyncio.to_thread(reader.wait, 60)
        await asyncio.to_thread(pump.join, 30)
    assert reader.returncode == 0
    assert second["published"]["version"] == first["published"]["version"] + 1
    kinds = [_generation(_parse(line), gens) for line in lines]
    assert set(kinds) == {0, 1}, f"mixed or unknown answers: {kinds}"
    switched = kinds.index(1)
    assert kinds[switched:] == [1] * (len(kinds) - switched), "went back to the old generation"

    result = batch_cli(
        "rollback",
        LOOKUP,
        "--registry",
        suite.address("registry"),
        "--featurestore",
        suite.address("featurestore"),
    )
    assert result.returncode == 0, result.stderr

    async def serves_first_again() -> None:
        assert _generation(await asyncio.to_thread(_ask, suite, PROBE), gens) == 0

    await eventually(serves_first_again, timeout=30)

    # A third run replaces the first (production after the rollback): the second generation,
    # neither live nor the one kept for rollback, is expired; rollback then skips it.
    pq.write_table(two_input_table(ROWS, seed=23), tmp_path / "g3.parquet", row_group_size=5000)
    third = await asyncio.to_thread(_run, suite, tmp_path / "g3.parquet", tmp_path / "o3", "g3")
    assert third["published"]["previous_version"] == first["published"]["version"]
    assert third["published"]["expired_views"] == [f"{LOOKUP}.g2"]
    async with grpc.aio.insecure_channel(suite.address("featurestore")) as channel:
        fs = featurestore_pb2_grpc.FeatureStoreStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await fs.GetFeatureView(featurestore_pb2.GetFeatureViewRequest(name=f"{LOOKUP}.g2"))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    result = batch_cli(
        "rollback",
        LOOKUP,
        "--registry",
        suite.address("registry"),
        "--featurestore",
        suite.address("featurestore"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["to_version"] == first["published"]["version"]
    await eventually(serves_first_again, timeout=30)
