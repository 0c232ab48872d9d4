"""V2 datatypes and tensor specs: the one map between V2 names, numpy, ONNX type strings,
Triton config enums and the typed ``InferTensorContents`` fields; shape limits."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import numpy as np

from modelserve.errors import InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb

# Set by the gateway on a call that carries several client requests merged along the batch
# dimension, so the worker's statistics count client requests, not internal calls.
MERGED_REQUESTS_PARAMETER = "modelserve_merged_requests"


@dataclass(frozen=True)
class DType:
    """One V2 datatype and its names elsewhere."""

    v2: str
    numpy: np.dtype | None  # None: no numpy equivalent (BF16)
    onnx: str  # ONNX Runtime's type string, e.g. "tensor(float)"
    config: str  # Triton model_config DataType enum name
    contents_field: str | None  # InferTensorContents field for typed tensors; None = raw only
    itemsize: int  # bytes per element in raw form; 0 for BYTES (length-prefixed)


DTYPES: dict[str, DType] = {
    d.v2: d
    for d in (
        DType("BOOL", np.dtype(np.bool_), "tensor(bool)", "TYPE_BOOL", "bool_contents", 1),
        DType("UINT8", np.dtype(np.uint8), "tensor(uint8)", "TYPE_UINT8", "uint_contents", 1),
        DType("UINT16", np.dtype(np.uint16), "tensor(uint16)", "TYPE_UINT16", "uint_contents", 2),
        DType("UINT32", np.dtype(np.uint32), "tensor(uint32)", "TYPE_UINT32", "uint_contents", 4),
        DType("UINT64", np.dtype(np.uint64), "tensor(uint64)", "TYPE_UINT64", "uint64_contents", 8),
        DType("INT8", np.dtype(np.int8), "tensor(int8)", "TYPE_INT8", "int_contents", 1),
        DType("INT16", np.dtype(np.int16), "tensor(int16)", "TYPE_INT16", "int_contents", 2),
        DType("INT32", np.dtype(np.int32), "tensor(int32)", "TYPE_INT32", "int_contents", 4),
        DType("INT64", np.dtype(np.int64), "tensor(int64)", "TYPE_INT64", "int64_contents", 8),
        # Triton has no typed field for FP16: it travels as raw bytes only.
        DType("FP16", np.dtype(np.float16), "tensor(float16)", "TYPE_FP16", None, 2),
        DType("FP32", np.dtype(np.float32), "tensor(float)", "TYPE_FP32", "fp32_contents", 4),
        DType("FP64", np.dtype(np.float64), "tensor(double)", "TYPE_FP64", "fp64_contents", 8),
        DType("BF16", None, "tensor(bfloat16)", "TYPE_BF16", None, 2),
        DType("BYTES", np.dtype(np.object_), "tensor(string)", "TYPE_STRING", "bytes_contents", 0),
    )
}
DTYPE_BY_ONNX: dict[str, DType] = {d.onnx: d for d in DTYPES.values()}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model signature; -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


# Refuse absurd shapes before anything is allocated (RELIABILITY.md, design rule 9).
MAX_TENSOR_ELEMENTS = 2**31
# numpy 2 cannot hold more dimensions than this, so a deeper shape could never be decoded.
MAX_RANK = 64

_LEN = struct.Struct("<I")  # Triton's BYTES element prefix: little-endian uint32 length
_DTYPE_BY_NUMPY: dict[np.dtype, DType] = {
    d.numpy: d for d in DTYPES.values() if d.numpy is not None
}
# numpy dtype of the values each typed field carries; narrower datatypes are range-checked.
_FIELD_DTYPE: dict[str, np.dtype] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}


class _WireTensor(Protocol):
    """What request inputs and response outputs have in common."""

    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> Iterable[int]: ...
    @property
    def contents(self) -> pb.InferTensorContents: ...
    def HasField(self, field_name: Literal["contents"]) -> bool: ...


class _Where(NamedTuple):
    """Which tensor a message is about: prints as ``input 'x'``."""

    kind: str  # "input", "output" or "tensor"
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}"

    @property
    def raw_field(self) -> str:
        return "raw_output_contents" if self.kind == "output" else "raw_input_contents"


def datatype_from_onnx(onnx_type: str) -> str:
    """V2 datatype for an ONNX Runtime type string such as ``tensor(float)``."""
    dt = DTYPE_BY_ONNX.get(onnx_type)
    if dt is None:
        raise InvalidArgumentError(
            f"unsupported ONNX type {onnx_type!r}; expected one of {', '.join(DTYPE_BY_ONNX)}"
        )
    return dt.v2


def shape_from_onnx(dims: Sequence[int | str | None]) -> tuple[int, ...]:
    """ONNX dims to a spec shape: symbolic, unknown or negative dims become -1."""
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims)
