"""Check that an ONNX file is safe and loadable, and read its signature.

Used by the registry when a version is pushed and by the worker before it loads one. Both run
it in an executor: it parses the whole file and builds an ONNX Runtime session (blocking).

Safety (RELIABILITY.md rule 7): external-data models are refused outright, so no tensor can make
ONNX Runtime open a file outside the artifact; the session is built from the bytes, not the
path, so there is no model directory for a relative location to resolve against either; no
custom-op library is ever registered, so an unknown op domain fails the load.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
from onnx import AttributeProto, GraphProto, TensorProto

from modelserve.errors import FailedPreconditionError
from modelserve.tensors import DTYPE_BY_ONNX, TensorSpec

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"  # Triton's platform name for ONNX Runtime models
_HASH_BLOCK = 1 << 20
_REASON_MAX = 200
# ONNX Runtime prefixes its messages with "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : ".
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*")


@dataclass(frozen=True)
class ModelSignature:
    """The inputs and outputs of a model, as V2 datatypes and shapes (-1 = variable)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    platform: str = PLATFORM


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB blocks (blocking)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def inspect_model(path: Path) -> ModelSignature:
    """Refuse unsafe or unloadable ONNX files (FailedPreconditionError), else the signature.

    Messages never carry ``path``: the caller may hand them to a remote client.
    """
    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # DecodeError mostly; whatever it is, the bytes are not a model
        log.info("onnx could not parse %s: %s", path, exc)
        raise FailedPreconditionError(
            "artifact is not an ONNX model: its protobuf could not be parsed"
        ) from exc
    _refuse_external_data(model)
    session = _load_session(data, path)
    inputs = _specs(session.get_inputs(), "input")
    outputs = _specs(session.get_outputs(), "output")
    return ModelSignature(inputs=inputs, outputs=outputs)


def _refuse_external_data(model: onnx.ModelProto) -> None:
    for tensor in _all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0:
            raise FailedPreconditionError(
                f"model keeps tensor {_short(tensor.name)!r} in external data; modelserve only "
                "accepts self-contained ONNX files (save without external data, files < 2 GiB)"
            )


def _all_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every TensorProto in the model: initializers and node attributes, in every subgraph
    and every local function (an If/Loop body can hide an external tensor too)."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            for attr in node.attribute:
                yield from _attribute_tensors(attr)


def _graph_tensors(graph: GraphProto) -> Iterator[TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            yield from _attribute_tensors(attr)


def _attribute_tensors(attr: AttributeProto) -> Iterator[TensorProto]:
    if attr.HasField("t"):
        yield attr.t
    yield from attr.tensors
    if attr.HasField("sparse_tensor"):
        yield attr.sparse_tensor.values
        yield attr.sparse_tensor.indices
    for sparse in attr.sparse_tensors:
        yield sparse.values
        yield sparse.indices
    if attr.HasField("g"):
        yield from _graph_tensors(attr.g)
    for graph in attr.graphs:
        yield from _graph_tensors(graph)


def _load_session(data: bytes, path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One thread each: this session only proves the file loads; it never runs inferences.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own pybind classes, not a common base
        log.info("onnxruntime refused %s: %s", path, exc)
        raise FailedPreconditionError(
            f"ONNX Runtime cannot load the model: {_ort_reason(exc)}"
        ) from exc


def _ort_reason(exc: BaseException) -> str:
    """A short, path-free reason from an ONNX Runtime error (the first line, no prefix)."""
    lines = str(exc).strip().splitlines()
    text = _ORT_PREFIX.sub("", lines[0]) if lines else type(exc).__name__
    # Loading from bytes keeps paths out of ORT's messages, but be sure: drop anything that
    # looks like an absolute path.
    text = re.sub(r"(?:[A-Za-z]:)?[/\\][^\s'\"]+", "<path>", text)
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


def _specs(args: Sequence[Any], what: str) -> tuple[TensorSpec, ...]:
    specs = []
    for arg in args:
        dtype = DTYPE_BY_ONNX.get(arg.type)
        if dtype is None:
            supported = ", ".join(sorted(d.v2 for d in DTYPE_BY_ONNX.values()))
            raise FailedPreconditionError(
                f"model {what} {_short(arg.name)!r} has type {_short(arg.type)}; modelserve "
                f"serves dense tensors of {supported}"
            )
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
        specs.append(TensorSpec(name=arg.name, datatype=dtype.v2, shape=shape))
    return tuple(specs)


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
