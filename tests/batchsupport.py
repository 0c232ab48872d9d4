"""Helpers for batch-inference tests: a model with two inputs and a vector output, input
data, ONNX Runtime run by hand, a registry process, the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
from onnx import TensorProto, helper, numpy_helper

from modelserve.cli.registry_client import push_version
from modelserve.cli.suite import wait_serving
from modelserve.proto.modelserve.v1 import registry_pb2_grpc

CLI = Path(sys.executable).parent / "modelserve"
TWO_IN = "batch_two_in"


def two_input_model(seed: int = 7) -> onnx.ModelProto:
    """a FP32 [-1, 3], b FP32 [-1, 2] -> vec FP32 [-1, 4] = [a, b] W + c; score FP32 [-1, 1] =
    sigmoid(sum(vec))."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    c = rng.standard_normal(4).astype(np.float32)
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
        helper.make_node("Gemm", ["ab", "W", "C"], ["vec"]),
        helper.make_node("ReduceSum", ["vec", "axes"], ["s"], keepdims=1),
        helper.make_node("Sigmoid", ["s"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two_in",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("vec", TensorProto.FLOAT, ["batch", 4]),
        ],
        [
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(c, "C"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def two_input_table(rows: int, seed: int = 1, start: int = 0) -> pa.Table:
    """id (INT64 key), a as fixed-size lists of 3, b as columns b_0, b_1 (the default
    mapping's two shapes), and a text column the model does not read."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows, 3)).astype(np.float32)
    b = rng.standard_normal((rows, 2)).astype(np.float32)
    return pa.table(
        {
            "id": pa.array(np.arange(start, start + rows, dtype=np.int64)),
            "a": pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), 3),
            "b_0": pa.array(b[:, 0]),
            "b_1": pa.array(b[:, 1]),
            "note": pa.array([f"row{i}" for i in range(start, start + rows)]),
        }
    )


def by_hand(model: onnx.ModelProto, table: pa.Table) -> dict[str, np.ndarray]:
    """ONNX Runtime run by hand on the table's rows (the reference)."""
    a = np.asarray(table.column("a").combine_chunks().flatten(), np.float32).reshape(-1, 3)
    b = np.stack([table.column("b_0").to_numpy(), table.column("b_1").to_numpy()], axis=1)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    score, vec = session.run(["score", "vec"], {"a": a, "b": b.astype(np.float32)})
    return {"score": score.reshape(-1), "vec": vec}


def write_parts(table: pa.Table, directory: Path, files: int, row_group_rows: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    per = -(-table.num_rows // files)
    for i in range(files):
        pq.write_table(
            table.slice(i * per, per),
            directory / f"f{i:03d}.parquet",
            row_group_size=row_group_rows,
        )


@dataclass
class Registry:
    address: str
    process: subprocess.Popen[bytes]
    log: Path


def start_registry(data_dir: Path) -> Registry:
    data_dir.mkdir(parents=True, exist_ok=True)
    port_file = data_dir / "registry.port.json"
    log = data_dir / "registry.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "registry",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--data-dir",
                str(data_dir / "registry"),
                "--instance-id",
                f"batch-{os.getpid()}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
        )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"registry did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    address = f"127.0.0.1:{json.loads(port_file.read_text())['port']}"
    asyncio.run(wait_serving(address, timeout=60))
    return Registry(address, proc, log)


async def push(address: str, name: str, path: Path, labels: Sequence[str] = ()) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        v = await push_version(registry_pb2_grpc.RegistryStub(channel), name, path, labels=labels)
        return v.version


def batch_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "batch", *args], capture_output=True, text=True, timeout=timeout
    )


def read_output(path: Path) -> pa.Table:
    """The output dataset, rows ordered by id (parts may finish in any order)."""
    table = pq.read_table(path)
    return table.sort_by("id")


def staging_dirs(output: Path) -> Iterator[Path]:
    return output.parent.glob(f".{output.name}.staging-*")
