"""Reading a version's ONNX file for the worker: its bytes (external data refused before ONNX
Runtime sees them) and the signature the file itself declares."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from modelserve.errors import FailedPreconditionError
from modelserve.tensors import DTYPE_BY_ONNX, TensorSpec


def read_model(path: Path, label: str) -> bytes:
    """The file's bytes, refusing external data (RELIABILITY.md rule 7) before ORT sees it."""
    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise FailedPreconditionError(f"{label} is not a readable ONNX model") from exc
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model)):
        raise FailedPreconditionError(
            f"{label} stores tensors as external data, which this worker refuses; "
            "push a self-contained model (onnx.save with save_as_external_data=False)"
        )
    return data


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers and attribute tensors of every graph, subgraph and local function."""
    graphs = [model.graph]
    nodes = [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield from (sparse.values, sparse.indices)
            nodes.extend(graph.node)
            continue
        for attr in nodes.pop().attribute:
            yield from (attr.t, *attr.tensors)
            for sparse in (attr.sparse_tensor, *attr.sparse_tensors):
                yield from (sparse.values, sparse.indices)
            graphs.extend(attr.graphs)
            if attr.HasField("g"):
                graphs.append(attr.g)


def file_signature(args: Sequence[Any], kind: str, label: str) -> list[TensorSpec]:
    """The file's own tensors as specs (-1 for every symbolic or unknown dimension)."""
    specs = []
    for arg in args:
        dtype = DTYPE_BY_ONNX.get(arg.type)
        if dtype is None:
            raise FailedPreconditionError(
                f"{label} {kind} {arg.name!r} has type {arg.type}, which this worker cannot serve"
            )
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
        specs.append(TensorSpec(arg.name, dtype.v2, shape))
    return specs
